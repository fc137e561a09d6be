"""Tiny CPU settings shared by the tests (import from here; the fixtures are in conftest).

The CPU-tiny settings themselves (the cpu_tiny trainer on one thread, no sample video, short
SynthSing clips) are one Hydra preset, ``singer/conf/experiment/cpu_tiny.yaml``, which the
laptop sweeps use too; a test adds only its job size.
"""

TINY = "experiment=cpu_tiny"

# A few steps of a very small model on 6 short clips: seconds per job.
FAST = [
    TINY,
    "trainer.steps=4",
    "trainer.val_every=2",
    "trainer.log_every=2",
    "trainer.ckpt_every=2",
    "backbone.channels=[8,16,32]",
    "frontend=mel",
    "data.synth.clips=6",
]
