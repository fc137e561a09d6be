"""The trainer's GPU-path switches (compile + eager fallback, channels-last, gradient
checkpointing, SDPA kernel choice, bf16 autocast, fused AdamW), a few tiny steps each.

Every switch runs on CPU here; the ``gpu`` tests repeat the combination on CUDA and skip
without it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import tiny
from singer.config import compose
from singer.acceleration import enable_grad_checkpointing, sdpa_context
from singer.trainer import Trainer

TINY = [
    tiny.TINY,
    "trainer.batch_size=2",
    "trainer.num_frames=4",
    "trainer.steps=2",
    "trainer.val_every=2",
    "trainer.val_batches=1",
    "frontend=mel",
    "backbone.channels=[16,32]",
    "data.synth.clips=6",
]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthsing")


def fit(data_root, out_dir, *extra) -> Trainer:
    threads = torch.get_num_threads()
    trainer = Trainer(compose([*TINY, f"data.root={data_root}", *extra]), out_dir, progress=False)
    try:
        trainer.result = trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in trainer.model.state_dict().items()}


@pytest.fixture(scope="module")
def eager(data_root, tmp_path_factory):
    """The reference: the same tiny run with every switch off."""
    return fit(data_root, tmp_path_factory.mktemp("eager"))


def _failing_backend(gm, example_inputs):
    raise RuntimeError("this backend always fails (test)")


def test_compile_failure_warns_and_trains_eagerly_to_the_same_weights(data_root, tmp_path, eager):
    from torch._dynamo import list_backends, register_backend

    if "singer_test_failing" not in list_backends(exclude_tags=()):
        register_backend(_failing_backend, name="singer_test_failing")
    with pytest.warns(RuntimeWarning, match="torch.compile failed, training continues eagerly"):
        trainer = fit(
            data_root,
            tmp_path,
            "trainer.compile=true",
            "trainer.compile_backend=singer_test_failing",
        )
    assert trainer.compile_status.startswith("eager fallback")
    assert "forward" not in vars(trainer.model.backbone)  # the backbone's own forward again
    # the failed compiled step was rolled back (random streams included) and run eagerly
    assert trainer.result.losses == eager.result.losses
    a, b = weights(trainer), weights(eager)
    assert all(torch.equal(a[k], b[k]) for k in a)

    import mlflow

    run = mlflow.search_runs(experiment_names=["singer"]).iloc[0]
    assert run["tags.compile"].startswith("eager fallback")


def test_unknown_compile_backend_falls_back_at_setup(data_root, tmp_path):
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        trainer = fit(
            data_root, tmp_path, "trainer.compile=true", "trainer.compile_backend=no_such_backend"
        )
    assert trainer.compile_status.startswith("eager fallback") and trainer.result.step == 2


def test_compile_that_works_keeps_state_dict_keys(data_root, tmp_path, eager):
    # The "eager" backend runs TorchDynamo's tracing (where untraceable code fails) without
    # inductor's code generation, which takes minutes on 2 CPU cores.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        trainer = fit(data_root, tmp_path, "trainer.compile=true", "trainer.compile_backend=eager")
    assert trainer.compile_status == "compiled (eager)"
    assert "forward" in vars(trainer.model.backbone)
    assert "forward" in vars(
        trainer.model.backbone.bottleneck.filter
    )  # the SFM runs eagerly inside
    assert all(np.isfinite(trainer.result.losses))
    assert (
        weights(trainer).keys() == weights(eager).keys()
    )  # no "_orig_mod." prefixes in checkpoints
    np.testing.assert_allclose(trainer.result.losses, eager.result.losses, rtol=1e-4)


def test_grad_checkpointing_gives_the_same_training(data_root, tmp_path, eager):
    trainer = fit(data_root, tmp_path, "trainer.grad_checkpointing=true")
    assert trainer.model.backbone.grad_checkpointing
    np.testing.assert_allclose(trainer.result.losses, eager.result.losses, rtol=1e-5)
    a, b = weights(trainer), weights(eager)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_channels_last_and_math_attention(data_root, tmp_path, eager):
    trainer = fit(data_root, tmp_path, "trainer.channels_last=true", "trainer.attention=math")
    conv = trainer.model.backbone.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    np.testing.assert_allclose(trainer.result.losses, eager.result.losses, rtol=1e-4)
    # the checkpoint loads back into a freshly built (contiguous) model
    state = torch.load(trainer.result.checkpoint, weights_only=True)
    fresh = trainer.spec.build(trainer.cfg)
    fresh.load_state_dict(state["model"])


def test_bf16_autocast_on_cpu(data_root, tmp_path):
    trainer = fit(data_root, tmp_path, "trainer.precision=bf16")
    assert trainer.amp_dtype == torch.bfloat16
    assert all(np.isfinite(trainer.result.losses))
    assert all(
        p.dtype == torch.float32 for p in trainer.model.parameters()
    )  # master weights stay fp32


def test_fused_adamw_switch(data_root, tmp_path):
    trainer = fit(
        data_root, tmp_path, "trainer.fused_adamw=true", "trainer.steps=1", "trainer.val_every=1"
    )
    assert trainer.optimizer.defaults["fused"] is True
    assert all(np.isfinite(trainer.result.losses))


def test_bad_attention_name_is_rejected_before_any_work():
    with pytest.raises(ValueError, match="trainer.attention must be one of"):
        Trainer(compose([*TINY, "trainer.attention=fastest"]), "unused", progress=False)
    with pytest.raises(ValueError):
        sdpa_context("fastest")


def test_grad_checkpointing_finds_the_outermost_modules():
    class Leaf(torch.nn.Module):
        enabled = False

        def set_grad_checkpointing(self, enable=True):
            self.enabled = enable

    outer = torch.nn.Sequential(Leaf(), torch.nn.Sequential(torch.nn.Linear(1, 1), Leaf()))
    assert enable_grad_checkpointing(outer) == ["0", "1.1"]
    assert outer[0].enabled and outer[1][1].enabled
    assert enable_grad_checkpointing(torch.nn.Linear(1, 1)) == []


# -- CUDA ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
def test_gpu_bf16_compile_channels_last_flash(data_root, tmp_path):
    trainer = fit(
        data_root,
        tmp_path,
        "device=cuda",
        "trainer.precision=auto",
        "trainer.compile=true",
        "trainer.channels_last=true",
        "trainer.attention=flash",
        "trainer.grad_checkpointing=true",
        "trainer.steps=3",
        "trainer.val_every=3",
    )
    assert trainer.device.type == "cuda" and trainer.amp_dtype == torch.bfloat16
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer.compile_status.startswith("compiled"), trainer.compile_status
    assert all(np.isfinite(trainer.result.losses))


@pytest.mark.gpu
@requires_cuda
def test_gpu_eager_matches_itself(data_root, tmp_path):
    a = fit(data_root, tmp_path / "a", "device=cuda")
    b = fit(data_root, tmp_path / "b", "device=cuda")
    np.testing.assert_allclose(a.result.losses, b.result.losses, rtol=1e-3)
