"""Tiny CPU settings shared by the tests (import from here; the fixtures are in conftest)."""

# A few steps of a very small model on 6 short clips: seconds per job.
FAST = [
    "trainer=cpu_tiny",
    "trainer.steps=4",
    "trainer.val_every=2",
    "trainer.log_every=2",
    "trainer.ckpt_every=2",
    "trainer.sample_at_end=false",
    "trainer.threads=1",
    "backbone.channels=[8,16,32]",
    "frontend=mel",
    "data.synth.clips=6",
    "data.synth.seconds=2.0",
]
