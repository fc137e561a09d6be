"""GaussianDiffusion: v-prediction targets, zero terminal SNR, min-SNR weights, DDIM sampling, CFG."""

import pytest
import torch

from singer.diffusion import GaussianDiffusion, cfg_combine, drop_conditions

T = 1000


def alpha_sigma(diffusion: GaussianDiffusion, t: torch.Tensor, ndim: int):
    a = diffusion.alphas_cumprod[t].float().view(-1, *([1] * (ndim - 1)))
    return a.sqrt(), (1 - a).sqrt()


def test_add_noise_and_velocity_reconstruct_x0_and_noise():
    d = GaussianDiffusion()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 2, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 250, 998, T - 1])
    x_t = d.add_noise(x0, noise, t)
    v = d.target(x0, noise, t)
    alpha, sigma = alpha_sigma(d, t, x0.dim())
    torch.testing.assert_close(x_t, alpha * x0 + sigma * noise)
    torch.testing.assert_close(alpha * x_t - sigma * v, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sigma * x_t + alpha * v, noise, atol=1e-5, rtol=1e-5)
    # At the zero-SNR timestep x_t is pure noise and v = −x0.
    torch.testing.assert_close(x_t[-1], noise[-1])
    torch.testing.assert_close(v[-1], -x0[-1])


def test_terminal_snr_is_exactly_zero():
    d = GaussianDiffusion()
    t = torch.arange(T)
    snr = d.snr(t)
    assert d.alphas_cumprod[-1].item() == 0.0
    assert snr[-1].item() == 0.0
    assert torch.isfinite(snr).all()
    assert (snr[:-1] > 0).all() and (snr[1:] <= snr[:-1]).all()  # strictly noisier over time

    plain = GaussianDiffusion(zero_terminal_snr=False)
    assert plain.snr(torch.tensor([T - 1])).item() > 1e-3


def test_sampler_config_is_trailing_zero_snr_v_prediction():
    d = GaussianDiffusion()
    sampler = d.make_sampler()
    assert sampler.config.prediction_type == "v_prediction"
    assert sampler.config.rescale_betas_zero_snr
    sampler.set_timesteps(40)
    assert int(sampler.timesteps[0]) == T - 1  # trailing spacing starts at the zero-SNR step
    assert sampler is not d.make_sampler()


@pytest.mark.parametrize(
    "prediction_type,zero_snr",
    [("v_prediction", True), ("v_prediction", False), ("epsilon", False), ("sample", True)],
)
def test_min_snr_weights_match_formula(prediction_type, zero_snr):
    gamma = 5.0
    d = GaussianDiffusion(
        prediction_type=prediction_type, zero_terminal_snr=zero_snr, min_snr_gamma=gamma
    )
    t = torch.arange(T)
    acp = d.train_scheduler.alphas_cumprod.double()
    snr = acp / (1 - acp)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    floored = torch.minimum(snr + 1, torch.full_like(snr, gamma))  # x0-space weight, ≥ 1
    expected = {
        "v_prediction": floored / (snr + 1),
        "epsilon": clipped / snr,
        "sample": floored,
    }[prediction_type]
    weight = d.loss_weight(d.snr(t))
    assert torch.isfinite(weight).all()
    torch.testing.assert_close(weight.double(), expected, rtol=1e-5, atol=1e-7)
    if zero_snr:
        assert weight[-1].item() == 1.0  # the SNR = 0 step trains (it got weight 0 before)

    unweighted = GaussianDiffusion(
        prediction_type=prediction_type, zero_terminal_snr=zero_snr, min_snr_gamma=None
    )
    assert torch.equal(unweighted.loss_weight(unweighted.snr(t)), torch.ones(T))


def test_epsilon_weight_at_zero_snr_is_finite():
    d = GaussianDiffusion(prediction_type="epsilon", zero_terminal_snr=False)
    weight = d.loss_weight(torch.tensor([0.0, 1.0, 10.0]))
    torch.testing.assert_close(weight, torch.tensor([1.0, 1.0, 0.5]))


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        GaussianDiffusion(prediction_type="epsilon", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="prediction_type"):
        GaussianDiffusion(prediction_type="flow")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        GaussianDiffusion(min_snr_gamma=0.0)


def test_training_loss_is_the_weighted_mse_of_the_sampled_t_and_noise():
    d = GaussianDiffusion()
    x0 = torch.rand(3, 3, 2, 8, 8) * 2 - 1

    def denoise(x_t, t):
        return 0.5 * x_t

    loss, logs = d.training_loss(denoise, x0, generator=torch.Generator().manual_seed(11))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"mse", "weight_mean", "t_mean"} <= set(logs)

    # Recompute from the same generator stream: t first, then the noise.
    g = torch.Generator().manual_seed(11)
    t = torch.randint(0, T, (3,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    target = d.target(x0, noise, t)
    mse = (denoise(d.add_noise(x0, noise, t), t) - target).pow(2).flatten(1).mean(1)
    weight = d.loss_weight(d.snr(t))
    torch.testing.assert_close(loss, (weight * mse).mean())
    assert logs["mse"] == pytest.approx(mse.mean().item(), rel=1e-5)

    again, _ = d.training_loss(denoise, x0, generator=torch.Generator().manual_seed(11))
    assert again.item() == loss.item()


def test_training_loss_backpropagates():
    d = GaussianDiffusion()
    scale = torch.nn.Parameter(torch.tensor(0.3))
    loss, _ = d.training_loss(
        lambda x_t, t: scale * x_t, torch.zeros(2, 3, 2, 4, 4), torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert scale.grad is not None and torch.isfinite(scale.grad)


def test_sample_shape_determinism_and_timesteps():
    d = GaussianDiffusion()
    seen = []

    def denoise(x, t):
        seen.append(t.clone())
        return 0.3 * x

    shape = (2, 3, 4, 8, 8)
    a = d.sample(denoise, shape, steps=5, generator=torch.Generator().manual_seed(1))
    assert a.shape == shape and torch.isfinite(a).all()
    assert [int(s[0]) for s in seen] == [999, 799, 599, 399, 199]
    assert all(s.shape == (2,) and s.dtype == torch.long for s in seen)

    b = d.sample(denoise, shape, steps=5, generator=torch.Generator().manual_seed(1))
    c = d.sample(denoise, shape, steps=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)

    # Stochastic DDIM (eta > 0) is reproducible too: its step noise comes from the generator.
    e1 = d.sample(denoise, shape, steps=4, eta=1.0, generator=torch.Generator().manual_seed(3))
    e2 = d.sample(denoise, shape, steps=4, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(e1, e2)


def test_overfit_tiny_model_then_ddim_recovers_x0():
    """A per-pixel x0 parameter, trained only through the v-prediction loss, is what DDIM returns.

    The model predicts ``v̂ = (α_t·x_t − p)/σ_t`` from a learnable per-pixel estimate ``p``. This
    converges to the data only if the training target (diffusers ``get_velocity``), the
    zero-SNR schedule and the DDIM v-prediction step all use the same convention.
    """
    torch.manual_seed(0)
    d = GaussianDiffusion()
    x0 = torch.rand(1, 3, 2, 4, 4) * 1.6 - 0.8
    p = torch.nn.Parameter(torch.zeros_like(x0))

    def denoise(x_t, t):
        alpha, sigma = alpha_sigma(d, t, x_t.dim())
        return (alpha * x_t - p) / sigma

    opt = torch.optim.Adam([p], lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, _ = d.training_loss(denoise, x0.expand(8, -1, -1, -1, -1), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (p.detach() - x0).abs().max() < 0.02

    sample = d.sample(
        denoise, (1, 3, 2, 4, 4), steps=20, generator=torch.Generator().manual_seed(5)
    )
    assert (sample - x0).abs().max() < 0.03


def test_cfg_combine():
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(
        cfg_combine(cond, uncond, 3.5), torch.tensor([0.5 + 3.5 * 0.5, -1.0 + 3.5 * 3.0])
    )
    torch.testing.assert_close(
        GaussianDiffusion.cfg_combine(cond, uncond, 2.0), torch.tensor([1.5, 5.0])
    )


def test_drop_conditions():
    assert not drop_conditions(16, 0.0, torch.Generator().manual_seed(0)).any()
    assert drop_conditions(16, 1.0, torch.Generator().manual_seed(0)).all()
    mask = drop_conditions(20000, 0.25, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (20000,)
    assert abs(mask.float().mean().item() - 0.25) < 0.02
    assert torch.equal(mask, drop_conditions(20000, 0.25, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        drop_conditions(4, 1.5)


def test_terminal_steps_get_gradient():
    """The zero-SNR step and every t ≥ 900 carry weight ≥ 0.2, so they train (the unfloored
    min-SNR weight min(SNR, γ)/(SNR + 1) was 0 at t = T−1 and < 0.003 for t ≥ 900)."""
    d = GaussianDiffusion()
    t = torch.arange(900, T)
    weight = d.loss_weight(d.snr(t))
    assert weight.min().item() > 0.2 and weight[-1].item() == 1.0


def test_clip_sample_follows_the_codec():
    """Pixel-space video is bounded, latents are not: clamping the predicted x0 to ±1 in every
    DDIM step ruins unit-variance latents (RMSE 0.39 with a perfect denoiser)."""
    from singer.diffusion import diffusion_for_codec

    class Latent:
        bounded = False

    class Pixels:
        bounded = True

    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 2, 8, 8)  # N(0, 1) latents, ~1/3 of them beyond ±1
    for codec, worst in ((Latent(), 1e-4), (Pixels(), None)):
        d = diffusion_for_codec({}, codec)
        assert d.train_scheduler.config.clip_sample == codec.bounded

        def perfect(x_t, t, d=d):  # the exact v for the known x0
            a = d.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
            noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            return a.sqrt() * noise - (1 - a).sqrt() * x0

        out = d.sample(perfect, x0.shape, steps=40, generator=torch.Generator().manual_seed(1))
        rmse = (out - x0).pow(2).mean().sqrt().item()
        if worst is not None:
            assert rmse < worst, rmse
        else:
            assert rmse > 0.2  # the clamp: why latent codecs must not clip
    explicit = diffusion_for_codec({"clip_sample": True}, Latent())
    assert explicit.train_scheduler.config.clip_sample


def test_validation_batches_drop_no_conditions():
    """``condition_dropout=False`` (what the trainer's validation sets) makes the loss ignore the
    classifier-free-guidance dropout rate: the same weights give the same val loss at p = 0 and 1."""
    from singer.config import compose
    from singer.models.spec import get_model_spec

    cfg = compose(["trainer=cpu_tiny", "frontend=mel", "backbone.channels=[8,16,32]"])
    model = get_model_spec("singer").build(cfg).eval()
    g = torch.Generator().manual_seed(0)
    batch = {
        "video": torch.rand(2, 3, 8, 32, 32, generator=g) * 2 - 1,
        "ref": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
        "motion": torch.rand(2, 3, 2, 32, 32, generator=g) * 2 - 1,
        "audio": torch.randn(2, 5120, generator=g) * 0.1,
    }

    def loss(p, flag):
        model.audio_dropout = model.ref_dropout = p
        return model.training_loss(
            {**batch, "condition_dropout": flag}, torch.Generator().manual_seed(1)
        )[0]

    with torch.no_grad():
        assert loss(0.0, False) == loss(1.0, False)
        assert loss(0.0, True) != loss(1.0, True)  # training still drops
