"""Gaussian diffusion for video: training objective and DDIM sampling on diffusers schedulers.

The recipe follows SINGER (and Hallo, which it forks):

* **v-prediction** (``prediction_type="v_prediction"``): the network predicts
  ``v = α_t·ε − σ_t·x0`` with ``α_t = sqrt(ᾱ_t)``, ``σ_t = sqrt(1 − ᾱ_t)``.
* **Zero terminal SNR** (``zero_terminal_snr=True``): the betas are rescaled so that
  ``ᾱ_{T−1} = 0`` exactly (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
  are Flawed"). Otherwise the last training timestep still leaks a little of the signal
  (ᾱ ≈ 0.005 for the scaled-linear schedule), while sampling starts from pure noise: the
  model never learns to produce a sample from nothing, and generations drift to mean
  brightness. With SNR = 0 at t = T−1 the model's only sensible output there is
  ``v = −x0`` (i.e. predict the clean sample), which v-prediction can express; ε-prediction
  cannot (``x0 = (x_t − σ·ε)/α`` divides by α = 0), so that combination is rejected.
* **Trailing timestep spacing** (``timestep_spacing="trailing"``): the sampling timesteps are
  taken from the end of the schedule, so a DDIM run of any length starts at ``t = T−1`` —
  exactly the zero-SNR point the model was trained on — instead of skipping it
  ("leading" spacing would start at e.g. t = 975 for 40 steps).
* **Min-SNR loss weighting** (Hang et al. 2023) with γ = 5, floored so that every timestep
  trains. In x0 terms min-SNR weighs a sample by ``min(SNR, γ)``; since
  ``‖x̂0 − x0‖² = ‖v̂ − v‖² / (SNR + 1)`` that is ``min(SNR, γ)/(SNR + 1)`` on the v loss, which
  is 0 at the zero-terminal-SNR step and below 0.003 for every t ≥ 900: the very steps the
  zero-SNR schedule exists for would get no gradient. For v we therefore use
  ``min(SNR + 1, γ)/(SNR + 1)`` (Hallo's training scripts do the same: "add one to SNR before
  dividing"): 1 at SNR = 0, ``γ/(SNR + 1)`` for SNR ≥ γ − 1. x0 targets get the same x0-space
  weight, ``min(SNR + 1, γ)``; ε targets ``min(SNR, γ)/SNR`` (→ 1 as SNR → 0; ε is never
  combined with zero SNR). ``docs/metrics.md`` ("Diffusion loss weighting") has the measurement
  behind the choice.

Training uses ``diffusers.DDPMScheduler`` (``add_noise``, ``get_velocity``); sampling uses
``diffusers.DDIMScheduler`` built from the same config, a fresh instance per call so that
concurrent samplers never share mutable scheduler state.

Tensors are videos ``B×C×F×H×W`` but nothing here depends on the layout beyond the batch
axis coming first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from tqdm.auto import tqdm

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale · (cond − uncond)`` (scale 1 = conditional)."""
    return uncond + scale * (cond - uncond)


def drop_conditions(
    batch_size: int, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool mask ``B``: True where a sample's condition is dropped (probability ``p`` each).

    Drawn on the generator's device (CPU when there is none); move it where it is needed.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"condition dropout probability must be in [0, 1], got {p}")
    device = generator.device if generator is not None else "cpu"
    return torch.rand(batch_size, generator=generator, device=device) < p


class GaussianDiffusion:
    """v-prediction / zero-terminal-SNR diffusion with min-SNR weighting and DDIM sampling.

    ``denoise_fn(x_t: B×C×F×H×W, t: B int64) → B×C×F×H×W`` is the model (conditions and
    classifier-free guidance are closed over by the caller).

    Args:
        num_train_timesteps: T.
        beta_schedule: a diffusers beta schedule (``scaled_linear`` as Stable Diffusion).
        prediction_type: ``v_prediction`` | ``epsilon`` | ``sample``.
        zero_terminal_snr: rescale betas so that SNR(T−1) = 0.
        min_snr_gamma: γ of the min-SNR weight; ``None`` → unweighted MSE.
        beta_start, beta_end: endpoints of the beta schedule (Stable Diffusion's by default).
        clip_sample: clamp the predicted x0 to ``±clip_sample_range`` in each DDIM step
            (right for pixel-space video in [-1, 1]; turn off for unbounded latents).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        prediction_type: str = "v_prediction",
        zero_terminal_snr: bool = True,
        min_snr_gamma: float | None = 5.0,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
    ):
        if prediction_type not in PREDICTION_TYPES:
            choices = ", ".join(PREDICTION_TYPES)
            raise ValueError(
                f"unknown prediction_type '{prediction_type}'; choose one of {choices}"
            )
        if prediction_type == "epsilon" and zero_terminal_snr:
            raise ValueError(
                "prediction_type='epsilon' cannot be combined with zero_terminal_snr=True: at SNR = 0 the "
                "clean sample cannot be recovered from a noise prediction. Use 'v_prediction' (or 'sample'), "
                "or set zero_terminal_snr=False."
            )
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0 or None, got {min_snr_gamma}")
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.zero_terminal_snr = zero_terminal_snr
        self.min_snr_gamma = min_snr_gamma

        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            prediction_type=prediction_type,
            rescale_betas_zero_snr=zero_terminal_snr,
            timestep_spacing="trailing",
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
        )
        # set_alpha_to_one: the final DDIM step lands on the clean sample (ᾱ = 1).
        self._sample_config = dict(self.train_scheduler.config, set_alpha_to_one=True)
        # A private float64 copy for SNR / weights, so the scheduler's own tensors are never
        # moved between devices by this class.
        self.alphas_cumprod = self.train_scheduler.alphas_cumprod.to(torch.float64).clone()

    # The guidance and condition-dropout helpers, also reachable from an instance.
    cfg_combine = staticmethod(cfg_combine)
    drop_conditions = staticmethod(drop_conditions)

    # -- schedule helpers ---------------------------------------------------------------
    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``ᾱ_t / (1 − ᾱ_t)`` for timesteps ``t: B`` → ``B`` float32.

        Exactly 0 at ``t = T−1`` with zero terminal SNR; ``1 − ᾱ_t > 0`` for every t, so finite.
        """
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return (a / (1.0 - a)).float()

    def loss_weight(self, snr: torch.Tensor) -> torch.Tensor:
        """Min-SNR weight per sample (``B`` → ``B``); ones when ``min_snr_gamma`` is None."""
        if self.min_snr_gamma is None:
            return torch.ones_like(snr)
        if self.prediction_type == "v_prediction":
            # min(SNR + 1, γ)/(SNR + 1): 1 at the terminal step instead of 0 (module docstring).
            return (snr + 1.0).clamp(max=self.min_snr_gamma) / (snr + 1.0)
        if self.prediction_type == "sample":
            return (snr + 1.0).clamp(max=self.min_snr_gamma)
        # ε: min(SNR, γ)/SNR → 1 as SNR → 0; write the limit instead of 0/0.
        clipped = snr.clamp(max=self.min_snr_gamma)
        return torch.where(
            snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr)
        )

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = α_t·x0 + σ_t·noise`` (diffusers ``add_noise``)."""
        return self.train_scheduler.add_noise(x0, noise, t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target of ``prediction_type``: v, ε or x0."""
        if self.prediction_type == "v_prediction":
            return self.train_scheduler.get_velocity(x0, noise, t)
        if self.prediction_type == "epsilon":
            return noise
        return x0

    # -- training -----------------------------------------------------------------------
    def training_loss(
        self,
        denoise_fn: DenoiseFn,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One diffusion loss on clean samples ``x0: B×...``.

        Samples ``t ~ U{0, T−1}`` and Gaussian noise from ``generator`` (on the generator's
        device, then moved to ``x0``'s), forms ``x_t``, and regresses ``denoise_fn(x_t, t)``
        onto the target with per-sample min-SNR weights.

        ``weight``: an optional per-element weight of the squared error, broadcastable to
        ``x0`` (e.g. ``B×1×F×H×W`` for a video ``B×C×F×H×W``: Hallo's region-weighted loss).
        It changes neither the draws of t and noise nor the logged ``mse``.

        Returns:
            ``(loss, logs)``: the weighted scalar loss, and floats ``mse`` (unweighted),
            ``weighted_mse`` (only with ``weight``), ``weight_mean`` and ``t_mean``.
        """
        batch = x0.shape[0]
        device = generator.device if generator is not None else x0.device
        t = torch.randint(
            0, self.num_train_timesteps, (batch,), generator=generator, device=device
        ).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(
            x0.device
        )
        x_t = self.add_noise(x0, noise, t)
        target = self.target(x0, noise, t)

        prediction = denoise_fn(x_t, t)
        if prediction.shape != target.shape:
            raise ValueError(
                f"denoise_fn returned shape {tuple(prediction.shape)}, expected {tuple(target.shape)}"
            )
        error = (prediction.float() - target.float()).pow(2)
        mse = error.flatten(1).mean(dim=1)  # B
        logs = {"mse": mse.mean().item()}
        if weight is not None:
            mse_weighted = (error * weight.float()).flatten(1).mean(dim=1)
            logs["weighted_mse"] = mse_weighted.mean().item()
        else:
            mse_weighted = mse
        snr_weight = self.loss_weight(self.snr(t))
        loss = (snr_weight * mse_weighted).mean()
        logs["weight_mean"] = snr_weight.mean().item()
        logs["t_mean"] = t.float().mean().item()
        return loss, logs

    # -- sampling -----------------------------------------------------------------------
    def make_sampler(self) -> DDIMScheduler:
        """A fresh DDIM scheduler with this diffusion's config (v-pred, zero SNR, trailing)."""
        return DDIMScheduler.from_config(self._sample_config)

    @torch.no_grad()
    def sample(
        self,
        denoise_fn: DenoiseFn,
        shape: Sequence[int],
        *,
        steps: int = 40,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """DDIM sampling from pure noise → ``x0`` of ``shape`` (e.g. ``B×C×F×H×W``).

        Deterministic for a given generator state: the initial noise (and, with ``eta > 0``,
        the per-step noise) comes from ``generator``. With trailing spacing the first step is
        at ``t = T−1``, where SNR is 0 and the input is pure noise.
        """
        if steps < 1 or steps > self.num_train_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_train_timesteps}, got {steps}")
        scheduler = self.make_sampler()
        scheduler.set_timesteps(steps, device=device)
        noise_device = generator.device if generator is not None else device
        x = torch.randn(tuple(shape), generator=generator, device=noise_device, dtype=dtype).to(
            device
        )
        x = x * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        if progress:
            timesteps = tqdm(timesteps, desc="DDIM", leave=False)
        for t in timesteps:
            t_batch = torch.full((x.shape[0],), int(t), device=device, dtype=torch.long)
            model_output = denoise_fn(x, t_batch)
            x = scheduler.step(model_output, t, x, eta=eta, generator=generator).prev_sample
        return x


def diffusion_for_codec(kwargs: dict, codec) -> GaussianDiffusion:
    """A :class:`GaussianDiffusion` from config ``kwargs`` whose ``clip_sample`` follows the codec.

    DDIM's clamp of the predicted x0 to ``±1`` is right for pixel video in [-1, 1] and wrong for
    latents of roughly unit variance (a third of N(0, 1) values lie beyond ±1), so unless the
    config sets ``clip_sample`` itself (``auto`` or absent), it is ``codec.bounded``.
    """
    kwargs = dict(kwargs)
    if kwargs.get("clip_sample", "auto") in ("auto", None):
        kwargs["clip_sample"] = bool(getattr(codec, "bounded", False))
    return GaussianDiffusion(**kwargs)
