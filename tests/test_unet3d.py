"""UNet3D backbone: shapes, conditions, the SFM bottleneck hook, and wiring of every condition."""

import pytest
import torch

from backbone_helpers import check_per_sample_dropout, inputs, perturb
from singer.backbones import UNet3D, build_bottleneck_filter
from singer.backbones.blocks import FrameTransformer
from singer.registry import BACKBONES

# A tiny configuration so every test runs in well under a second on CPU.
TINY = dict(channels=(8, 16, 32), audio_dim=12, attention_heads=2)


def make(seed: int = 0, **overrides) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(**{**TINY, **overrides}).eval()


def test_registered_and_default_build():
    assert "unet3d" in BACKBONES.names()
    model = BACKBONES.build(
        "unet3d", in_channels=3, audio_dim=16, motion_frames=2, bottleneck_filter="sfm"
    )
    assert isinstance(model, UNet3D)
    assert model.channels == (32, 64, 128)
    x, t, audio, ref, motion = inputs(b=1, f=4, size=32, audio_dim=16)
    with torch.no_grad():
        out = model(x, t, audio, ref, motion)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "size,frames,motion_frames,give_motion",
    [(32, 4, 2, True), (32, 8, 2, False), (64, 4, 2, True), (64, 8, 0, False), (48, 4, 3, True)],
)
def test_output_shapes(size, frames, motion_frames, give_motion):
    model = make(motion_frames=motion_frames)
    x, t, audio, ref, motion = inputs(f=frames, size=size, m=motion_frames if give_motion else 0)
    with torch.no_grad():
        out = model(x, t, audio, ref, motion)
    assert out.shape == (2, 3, frames, size, size)
    assert torch.isfinite(out).all()


def test_out_channels_and_none_conditions():
    model = make(in_channels=4, out_channels=6)
    x, t, _, _, _ = inputs(c=4)
    with torch.no_grad():
        out = model(x, t, None, None, None)
    assert out.shape == (2, 6, 4, 32, 32)
    assert torch.isfinite(out).all()


def test_scalar_timestep_is_broadcast():
    model = make()
    x, t, audio, ref, motion = inputs()
    with torch.no_grad():
        a = model(x, torch.tensor(500), audio, ref, motion)
        b = model(x, torch.full((2,), 500), audio, ref, motion)
    torch.testing.assert_close(a, b)


def test_frame_size_must_divide():
    model = make()
    x, t, audio, ref, motion = inputs(size=34)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(x, t, audio, ref, motion)


def test_input_shape_errors():
    model = make()
    x, t, audio, ref, motion = inputs()
    with pytest.raises(ValueError, match="audio must be"):
        model(x, t, audio[:, :3], ref, motion)
    with pytest.raises(ValueError, match="motion must be"):
        model(x, t, audio, ref, motion[:, :, :1])
    with pytest.raises(ValueError, match="ref must be"):
        model(x, t, audio, ref[:, :, :16], motion)
    with pytest.raises(ValueError, match="in_channels=3"):
        model(x[:, :2], t, audio, ref, motion)
    with pytest.raises(ValueError, match="attention_heads"):
        UNet3D(channels=(8, 12), attention_heads=8)


def test_unknown_bottleneck_filter():
    with pytest.raises(ValueError, match="sfm, none"):
        make(bottleneck_filter="wavelet")
    with pytest.raises(ValueError, match="unknown bottleneck_filter 'x'"):
        build_bottleneck_filter("x", 8, 1, "haar")
    assert isinstance(build_bottleneck_filter("none", 8, 1, "haar"), torch.nn.Identity)


@pytest.mark.parametrize("size,levels,wavelet", [(32, 1, "haar"), (48, 1, "haar"), (64, 2, "db2")])
def test_sfm_is_identity_at_init(size, levels, wavelet):
    """With all other weights equal, SFM on and SFM off give the same output at init."""
    off = make(bottleneck_filter="none")
    on = make(seed=7, bottleneck_filter="sfm", sfm_levels=levels, sfm_wavelet=wavelet)
    perturb(off)  # so that the mid features reach the output through non-trivial weights
    result = on.load_state_dict(off.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("bottleneck.") for k in result.missing_keys)
    x, t, audio, ref, motion = inputs(size=size)
    with torch.no_grad():
        torch.testing.assert_close(
            on(x, t, audio, ref, motion), off(x, t, audio, ref, motion), atol=2e-5, rtol=1e-4
        )


def test_sfm_gains_receive_gradients():
    model = make(bottleneck_filter="sfm").train()
    gains = model.bottleneck.filter.gains
    assert torch.equal(gains.detach(), torch.ones_like(gains))
    x, t, audio, ref, motion = inputs()
    model(x, t, audio, ref, motion).pow(2).mean().backward()
    assert gains.grad is not None
    assert gains.grad.abs().sum() > 0


def test_zero_init_attention_then_audio_is_wired_at_every_resolution():
    model = make()
    x, t, audio, ref, motion = inputs()
    other_audio = torch.randn_like(audio)
    with torch.no_grad():
        # Output projections start at zero: audio cannot change the output yet.
        torch.testing.assert_close(
            model(x, t, audio, ref, motion), model(x, t, other_audio, ref, motion)
        )

    # One audio cross-attention per ResBlock on the down path, in the mid block and on the up path.
    blocks = [m for m in model.modules() if isinstance(m, FrameTransformer)]
    assert len(blocks) == 2 * len(TINY["channels"]) + 1
    assert all(b.audio for b in blocks)
    widths = {b.channels for b in blocks}
    assert widths == set(TINY["channels"])

    perturb(model)
    with torch.no_grad():
        a = model(x, t, audio, ref, motion)
        b = model(x, t, other_audio, ref, motion)
        dropped = model(x, t, None, ref, motion)
    assert (a - b).abs().max() > 1e-3
    assert (a - dropped).abs().max() > 1e-3

    # Every audio cross-attention (every resolution) takes part in the output.
    model(x, t, audio, ref, motion).pow(2).mean().backward()
    for block in blocks:
        assert block.audio_attn.to_k.weight.grad.abs().sum() > 0


def test_motion_and_reference_influence_output():
    model = make()
    perturb(model)
    x, t, audio, ref, motion = inputs()
    with torch.no_grad():
        base = model(x, t, audio, ref, motion)
        assert (base - model(x, t, audio, ref, torch.randn_like(motion))).abs().max() > 1e-3
        assert (base - model(x, t, audio, ref, None)).abs().max() > 1e-3
        assert (base - model(x, t, audio, torch.randn_like(ref), motion)).abs().max() > 1e-3
        assert (base - model(x, t, audio, None, motion)).abs().max() > 1e-3


def test_frames_interact_only_through_temporal_attention():
    """Frames are folded into the batch: without temporal attention each frame is independent."""
    x, t, audio, ref, _ = inputs()
    changed = x.clone()
    changed[:, :, 0] += 1.0
    for temporal, expect_change in [(False, False), (True, True)]:
        model = make(temporal_attention=temporal, motion_frames=0)
        perturb(model)
        with torch.no_grad():
            diff = (
                (model(x, t, audio, ref, None) - model(changed, t, audio, ref, None))[:, :, 1:]
                .abs()
                .max()
            )
        assert (diff > 1e-3) == expect_change, (temporal, diff)


def test_disabled_paths_ignore_their_condition():
    model = make(audio_attention=False, reference=False, motion_frames=0, bottleneck_filter="none")
    perturb(model)
    x, t, audio, ref, motion = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, audio, ref, motion), model(x, t, None, None, None))


def test_deterministic_by_seed():
    x, t, audio, ref, motion = inputs()
    a, b = make(seed=3), make(seed=3)
    with torch.no_grad():
        out_a = a(x, t, audio, ref, motion)
        torch.testing.assert_close(out_a, b(x, t, audio, ref, motion), rtol=0, atol=0)
        torch.testing.assert_close(out_a, a(x, t, audio, ref, motion), rtol=0, atol=0)
        assert (out_a - make(seed=4)(x, t, audio, ref, motion)).abs().max() > 1e-4


def test_few_optimizer_steps_reduce_loss():
    """The whole graph trains: a few Adam steps fit a fixed target better."""
    model = make().train()
    x, t, audio, ref, motion = inputs(b=1)
    target = torch.randn_like(x).clamp(-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = (model(x, t, audio, ref, motion) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_bf16_autocast_forward_backward():
    """Mixed precision (as the trainer uses on GPU) runs through the SFM bottleneck too."""
    model = make(bottleneck_filter="sfm").train()
    x, t, audio, ref, motion = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, audio, ref, motion)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
    out.float().pow(2).mean().backward()
    assert model.bottleneck.filter.gains.grad.abs().sum() > 0


def test_grad_checkpointing_same_loss_and_grads():
    """set_grad_checkpointing recomputes activations in backward: same loss, same gradients."""
    model = make(bottleneck_filter="sfm").train()
    perturb(model)
    x, t, audio, ref, motion = inputs()

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(x, t, audio, ref, motion).pow(2).mean()
        loss.backward()
        return loss.detach(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    plain_loss, plain_grads = loss_and_grads()
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    ckpt_loss, ckpt_grads = loss_and_grads()
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=1e-6, atol=1e-7)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) == len(
        list(model.parameters())
    )
    for name in plain_grads:
        torch.testing.assert_close(
            ckpt_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name
        )
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


def region_masks(b=2, f=4, size=32, seed=5):
    """Three soft masks per frame that sum to 1 at every pixel (a partition of unity)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, size, size, generator=g).softmax(dim=1)


def test_region_masks_default_off_and_partition_of_unity_is_identity():
    x, t, audio, ref, motion = inputs()
    masks = region_masks()
    plain = make()
    gated = make(audio_regions=3)
    perturb(plain)
    result = gated.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(
        k.endswith("audio_region_weights") for k in result.missing_keys
    )
    with torch.no_grad():
        base = plain(x, t, audio, ref, motion)
        # audio_regions=0 ignores masks: today's behaviour
        torch.testing.assert_close(plain(x, t, audio, ref, motion, region_masks=masks), base)
        # learned weights start at 1, so masks summing to 1 leave the output unchanged
        torch.testing.assert_close(
            gated(x, t, audio, ref, motion, region_masks=masks), base, atol=2e-5, rtol=1e-4
        )
        torch.testing.assert_close(gated(x, t, audio, ref, motion), base, atol=2e-5, rtol=1e-4)


def test_region_masks_gate_audio_and_weights_learn():
    model = make(audio_regions=3).train()
    perturb(model)
    x, t, audio, ref, motion = inputs()
    masks = region_masks()
    lip_only = torch.zeros_like(masks)
    lip_only[:, 0] = 1.0
    with torch.no_grad():
        a = model(x, t, audio, ref, motion, region_masks=masks)
        b = model(x, t, audio, ref, motion, region_masks=lip_only)
        assert (a - b).abs().max() > 1e-3
        # all-zero masks switch the audio path off: the audio no longer matters
        zero = torch.zeros_like(masks)
        torch.testing.assert_close(
            model(x, t, audio, ref, motion, region_masks=zero),
            model(x, t, torch.randn_like(audio), ref, motion, region_masks=zero),
        )
    model(x, t, audio, ref, motion, region_masks=masks).pow(2).mean().backward()
    blocks = [m for m in model.modules() if isinstance(m, FrameTransformer)]
    assert all(blk.audio_region_weights.grad.abs().sum() > 0 for blk in blocks)
    with pytest.raises(ValueError, match="region_masks must be"):
        model(x, t, audio, ref, motion, region_masks=masks[:, :2])


def test_per_sample_dropout_is_the_learned_absent_condition():
    check_per_sample_dropout(make())
