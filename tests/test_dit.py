"""DiT backbone: shapes, adaLN-zero identity at init, the mid-block SFM, conditions, and training
through the config with every audio front-end."""

import copy

import numpy as np
import pytest
import torch

from backbone_helpers import N_TOKENS, check_per_sample_dropout, inputs, perturb
from singer.backbones.dit import TokenLayout, VideoDiT
from singer.config import compose
from singer.data.synth import CUES
from singer.registry import BACKBONES, MODELS

# A tiny configuration so every unit test runs in well under a second on CPU.
TINY = dict(hidden_size=32, depth=3, num_heads=2, patch_size=4, audio_dim=12, mlp_ratio=2.0)


def make(seed: int = 0, **overrides) -> VideoDiT:
    torch.manual_seed(seed)
    return VideoDiT(**{**TINY, **overrides}).eval()


def is_block_modulation(name: str) -> bool:
    return name.startswith("blocks.") and ".modulation." in name


# -- construction and shapes -----------------------------------------------------------------
def test_registered_and_built_like_the_model_builder_does():
    assert "dit" in BACKBONES.names()
    model = BACKBONES.build(
        "dit", in_channels=3, audio_dim=16, motion_frames=2, bottleneck_filter="sfm"
    )
    assert isinstance(model, VideoDiT) and model.attention == "factorised"
    x, t, audio, ref, motion = inputs(b=1, f=4, audio_dim=16)
    with torch.no_grad():
        out = model(x, t, audio, ref, motion)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("attention", ["factorised", "full"])
@pytest.mark.parametrize(
    "size,frames,motion_frames,give_motion,temporal_patch",
    [
        (32, 4, 2, True, 1),
        (32, 6, 2, False, 1),
        (48, 4, 0, False, 1),
        (32, 4, 2, True, 2),
        (16, 8, 4, False, 2),
    ],
)
def test_output_shapes(attention, size, frames, motion_frames, give_motion, temporal_patch):
    model = make(attention=attention, motion_frames=motion_frames, temporal_patch=temporal_patch)
    perturb(model)
    x, t, audio, ref, motion = inputs(f=frames, size=size, m=motion_frames if give_motion else 0)
    with torch.no_grad():
        for a, r in [(audio, ref), (None, ref), (audio, None), (None, None)]:
            out = model(x, t, a, r, motion)
            assert out.shape == (2, 3, frames, size, size)
            assert torch.isfinite(out).all()


def test_out_channels_and_scalar_timestep():
    model = make(in_channels=4, out_channels=6)
    perturb(model)
    x, t, audio, ref, motion = inputs(c=4)
    with torch.no_grad():
        assert model(x, t, None, None, None).shape == (2, 6, 4, 32, 32)
        torch.testing.assert_close(
            model(x, torch.tensor(500), audio, ref, motion),
            model(x, torch.full((2,), 500), audio, ref, motion),
        )


def test_input_errors():
    model = make()
    x, t, audio, ref, motion = inputs()
    with pytest.raises(ValueError, match="divisible by 4"):
        model(*inputs(size=34)[:2])
    with pytest.raises(ValueError, match="audio must be"):
        model(x, t, audio[:, :3], ref, motion)
    with pytest.raises(ValueError, match="motion must be"):
        model(x, t, audio, ref, motion[:, :, :1])
    with pytest.raises(ValueError, match="ref must be"):
        model(x, t, audio, ref[:, :, :16], motion)
    with pytest.raises(ValueError, match="in_channels=3"):
        model(x[:, :2], t, audio, ref, motion)
    with pytest.raises(ValueError, match="temporal_patch=2"):
        make(temporal_patch=2)(*inputs(f=3))
    with pytest.raises(ValueError, match="temporal_patch=2"):
        make(temporal_patch=2, motion_frames=3)
    with pytest.raises(ValueError, match="factorised, full"):
        make(attention="axial")
    with pytest.raises(ValueError, match="num_heads"):
        make(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="sfm, none"):
        make(bottleneck_filter="wavelet")


# -- adaLN-zero --------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_fresh_model_outputs_zero_and_every_gate_is_zero(attention):
    model = make(attention=attention)
    for block in model.blocks:
        assert torch.count_nonzero(block.modulation[-1].weight) == 0
        assert torch.count_nonzero(block.modulation[-1].bias) == 0
    x, t, audio, ref, motion = inputs()
    with torch.no_grad():
        assert torch.count_nonzero(model(x, t, audio, ref, motion)) == 0


@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_adaln_zero_blocks_are_the_identity(attention):
    """With the block modulations at their zero init, every block passes its input through
    whatever its other weights, so the output is exactly the patch-embed → final-layer path."""
    model = make(attention=attention, bottleneck_filter="none", audio_regions=3)
    perturb(model, skip=is_block_modulation)
    shallow = copy.deepcopy(model)
    shallow.blocks = torch.nn.ModuleList()  # the input path alone: embeddings → final layer
    x, t, audio, ref, motion = inputs()
    masks = torch.rand(2, 3, 4, 32, 32).softmax(dim=1)
    with torch.no_grad():
        out = model(x, t, audio, ref, motion, region_masks=masks)
        assert out.abs().max() > 1e-3  # the final layer is perturbed: not trivially zero
        torch.testing.assert_close(out, shallow(x, t, audio, ref, motion), rtol=0, atol=0)
        torch.testing.assert_close(
            model(x, t, None, None, None), shallow(x, t, None, None, None), rtol=0, atol=0
        )

        # the same property block by block, on arbitrary tokens
        block = model.blocks[0]
        factorised = attention == "factorised"
        tokens = torch.randn(2, 3 if factorised else 4, 32 if factorised else 16, 32)
        cond = torch.randn(2, tokens.shape[1], 32)
        layout = TokenLayout(factorised=factorised, prefix=16 if factorised else 1)
        audio_tokens = torch.randn(2 * 3, N_TOKENS, 12)
        torch.testing.assert_close(
            block(tokens, cond, layout, audio_tokens), tokens, rtol=0, atol=0
        )

    # once the modulations move, the blocks change the output
    perturb(model, seed=9)
    with torch.no_grad():
        assert (
            model(x, t, audio, ref, motion) - shallow(x, t, audio, ref, motion)
        ).abs().max() > 1e-3


def test_every_sub_layer_starts_learning():
    """adaLN-zero is not a dead end: the first step moves the output layer, the second the block
    gates, and from the third every sub-layer (audio attention included) gets gradients."""
    model = make().train()
    x, t, audio, ref, motion = inputs()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = (model(x, t, audio, ref, motion) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for block in model.blocks:
        assert block.modulation[-1].weight.abs().sum() > 0
        assert block.audio_attn.to_k.weight.grad.abs().sum() > 0


# -- conditions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_every_condition_reaches_the_output(attention):
    model = make(attention=attention)
    perturb(model)
    x, t, audio, ref, motion = inputs()
    with torch.no_grad():
        base = model(x, t, audio, ref, motion)
        for changed in [
            model(x, t, torch.randn_like(audio), ref, motion),
            model(x, t, None, ref, motion),
            model(x, t, audio, torch.randn_like(ref), motion),
            model(x, t, audio, None, motion),
            model(x, t, audio, ref, torch.randn_like(motion)),
            model(x, t, audio, ref, None),
            model(x, t + 100, audio, ref, motion),
        ]:
            assert (base - changed).abs().max() > 1e-3


def test_audio_is_per_frame_without_temporal_mixing():
    """Full attention with one block per frame: frame f's audio acts first on frame f.

    With ``depth=1`` and no temporal/other-frame paths after the cross-attention (the MLP is
    per token), changing frame 0's audio changes frame 0's output and nothing else."""
    model = make(attention="full", depth=1, bottleneck_filter="none", motion_frames=0)
    perturb(model)
    x, t, audio, ref, _ = inputs(m=0)
    changed = audio.clone()
    changed[:, 0] = torch.randn_like(changed[:, 0])
    with torch.no_grad():
        diff = (
            (model(x, t, audio, ref, None) - model(x, t, changed, ref, None))
            .abs()
            .amax(dim=(0, 1, 3, 4))
        )
    assert diff[0] > 1e-3 and diff[1:].max() == 0


def test_disabled_paths_ignore_their_condition():
    model = make(audio_attention=False, reference=False, motion_frames=0, bottleneck_filter="none")
    perturb(model)
    x, t, audio, ref, motion = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, audio, ref, motion), model(x, t, None, None, None))


def test_region_masks_gate_the_audio_attention():
    x, t, audio, ref, motion = inputs()
    masks = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5)).softmax(dim=1)
    plain, gated = make(), make(audio_regions=3)
    perturb(plain)
    result = gated.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(
        k.endswith("audio_region_weights") for k in result.missing_keys
    )
    zero = torch.zeros_like(masks)
    with torch.no_grad():
        base = plain(x, t, audio, ref, motion)
        torch.testing.assert_close(
            plain(x, t, audio, ref, motion, region_masks=masks), base
        )  # ignored
        # weights start at 1: masks summing to 1 leave the output unchanged
        torch.testing.assert_close(
            gated(x, t, audio, ref, motion, region_masks=masks), base, atol=2e-5, rtol=1e-4
        )
        # all-zero masks switch the audio path off
        torch.testing.assert_close(
            gated(x, t, audio, ref, motion, region_masks=zero),
            gated(x, t, torch.randn_like(audio), ref, motion, region_masks=zero),
        )
    with pytest.raises(ValueError, match="region_masks must be"):
        gated(x, t, audio, ref, motion, region_masks=masks[:, :2])


# -- the SFM at the middle block ----------------------------------------------------------------
@pytest.mark.parametrize(
    "attention,levels,wavelet", [("factorised", 1, "haar"), ("full", 2, "db2")]
)
def test_mid_sfm_is_identity_at_init_and_trains(attention, levels, wavelet):
    off = make(attention=attention, bottleneck_filter="none")
    on = make(
        seed=7, attention=attention, bottleneck_filter="sfm", sfm_levels=levels, sfm_wavelet=wavelet
    )
    perturb(off)  # so that the middle tokens reach the output through non-trivial weights
    result = on.load_state_dict(off.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("bottleneck.") for k in result.missing_keys)
    x, t, audio, ref, motion = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            on(x, t, audio, ref, motion), off(x, t, audio, ref, motion), atol=2e-5, rtol=1e-4
        )

    gains = on.bottleneck.filter.gains
    on.train()(x, t, audio, ref, motion).pow(2).mean().backward()
    assert gains.grad is not None and gains.grad.abs().sum() > 0
    with torch.no_grad():
        gains.mul_(0.5)
        assert (on(x, t, audio, ref, motion) - off(x, t, audio, ref, motion)).abs().max() > 1e-4


# -- training machinery ---------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_grad_checkpointing_same_loss_and_grads(attention):
    model = make(attention=attention, audio_regions=3).train()
    perturb(model)
    x, t, audio, ref, motion = inputs()
    masks = torch.rand(2, 3, 4, 32, 32).softmax(dim=1)
    keep = torch.tensor(
        [True, False]
    )  # one sample with dropped conditions: every parameter is used

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        out = model(x, t, audio, ref, motion, region_masks=masks, audio_keep=keep, ref_keep=keep)
        loss = out.pow(2).mean()
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


def test_bf16_autocast_forward_backward():
    model = make(bottleneck_filter="sfm").train()
    perturb(model)
    x, t, audio, ref, motion = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, audio, ref, motion)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
    out.float().pow(2).mean().backward()
    assert model.bottleneck.filter.gains.grad.abs().sum() > 0


def test_deterministic_by_seed():
    x, t, audio, ref, motion = inputs()
    a, b = make(seed=3), make(seed=3)
    perturb(a)
    perturb(b)
    with torch.no_grad():
        torch.testing.assert_close(
            a(x, t, audio, ref, motion), b(x, t, audio, ref, motion), rtol=0, atol=0
        )


@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_few_optimizer_steps_reduce_loss(attention):
    model = make(attention=attention).train()
    x, t, audio, ref, motion = inputs(b=1)
    target = torch.randn_like(x).clamp(-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = (model(x, t, audio, ref, motion) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert (
        losses[-1] < 0.85 * losses[0]
    )  # the output starts at zero (adaLN-zero), so it starts slowly


# -- through the config: every front-end, and the models that take a backbone -------------------
FRONTENDS = {
    "raw": ["frontend=raw"],
    "mel": ["frontend=mel"],
    "msm": ["frontend=msm"],
    "sfm": ["frontend=sfm"],
    "wav2vec2": ["frontend=wav2vec2", "frontend.random_init=true", "frontend.encoder_layers=2"],
}
SMALL_DIT = ["backbone=dit", "backbone.hidden_size=48", "backbone.depth=2", "backbone.num_heads=2"]


def test_dit_config_composes_with_its_defaults():
    cfg = compose(["backbone=dit", "trainer=cpu_tiny"])
    assert cfg.backbone.name == "dit" and cfg.backbone.attention == "factorised"
    assert cfg.backbone.bottleneck_filter == "sfm"
    model = MODELS.get("singer").build(cfg)
    assert isinstance(model.backbone, VideoDiT)
    assert model.backbone.audio_dim == model.frontend.dim
    assert cfg.trainer.size % model.backbone.patch_size == 0


def _one_loss(overrides):
    cfg = compose(["trainer=cpu_tiny", *SMALL_DIT, *overrides])
    torch.manual_seed(0)
    spec = MODELS.get(cfg.model.name)
    model = spec.build(cfg).train()
    assert isinstance(model.backbone, VideoDiT)
    b, f, size = 2, cfg.trainer.num_frames, cfg.trainer.size
    g = torch.Generator().manual_seed(0)
    samples = int(f / cfg.data.fps * cfg.data.sample_rate)
    batch = {
        "video": torch.rand(b, 3, f, size, size, generator=g) * 2 - 1,
        "ref": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
        "motion": torch.rand(b, 3, 2, size, size, generator=g) * 2 - 1,
        "audio": torch.randn(b, samples, generator=g) * 0.1,
        "cues": torch.rand(b, f, len(CUES), generator=g),
        "has_cues": torch.ones(b, dtype=torch.bool),
    }
    loss, _ = spec.loss(model, batch, g)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert any(grad is not None and grad.abs().sum() > 0 for grad in grads)


@pytest.mark.parametrize("frontend", sorted(FRONTENDS))
@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_every_frontend_composes_with_dit(frontend, attention):
    _one_loss([*FRONTENDS[frontend], f"backbone.attention={attention}"])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthsing")


def _train(data_root, out_dir, *extra, clips: int = 6):
    from singer.trainer import train

    cfg = compose(
        [
            "trainer=cpu_tiny",
            "trainer.sample_at_end=false",
            f"data.synth.clips={clips}",
            "data.synth.seconds=2.0",
            f"data.root={data_root}",
            *extra,
        ]
    )
    return train(cfg, out_dir, progress=False)


@pytest.mark.parametrize("frontend", sorted(FRONTENDS))
def test_every_frontend_trains_a_few_steps_with_dit(data_root, tmp_path, frontend):
    result = _train(
        data_root,
        tmp_path / "run",
        *SMALL_DIT,
        *FRONTENDS[frontend],
        "trainer.steps=3",
        "trainer.val_every=3",
        "trainer.val_batches=1",
    )
    assert result.step == 3 and all(np.isfinite(result.losses))


def test_cpu_tiny_training_with_dit_reduces_the_loss(data_root, tmp_path):
    """60 steps of trainer=cpu_tiny: the validation loss (fixed batches and noise, on held-out
    speakers) drops clearly.

    The output layer starts at zero (adaLN-zero), so the first steps move little; a 3× learning
    rate lets a small DiT show its learning within 60 steps. 8 speakers, so that the held-out
    faces are not far from every face it trained on (at 30 steps and 3 speakers, val moved 4 %)."""
    result = _train(
        data_root,
        tmp_path / "run",
        *SMALL_DIT,
        "trainer.lr=3e-3",
        "trainer.steps=60",
        "trainer.val_every=60",
        clips=16,
    )
    assert all(np.isfinite(result.losses))
    assert result.val_loss < 0.85 * result.initial_val_loss, (
        result.initial_val_loss,
        result.val_loss,
    )
    assert result.final_loss < result.first_loss, (result.first_loss, result.final_loss)


@pytest.mark.parametrize("model", ["hallo", "aniportrait", "talking_singer"])
def test_baselines_take_dit_as_their_backbone(model):
    _one_loss([f"model={model}"])


@pytest.mark.parametrize("attention", ["factorised", "full"])
def test_per_sample_dropout_is_the_learned_absent_condition(attention):
    check_per_sample_dropout(make(attention=attention))
