"""A SynthSing speaker's look (``record["identity"]``) as a fixed-length vector, and back.

Clips prepared from SynthSing carry their speaker's identity (colours, face and hair shape) in
the cache index. The dataset hands it to models as ``identity: B×IDENTITY_DIM`` so that a model
that renders faces with SynthSing's own renderer (the laptop proxy, ``model=face_params``) can
draw the right person; every other model ignores it.
"""

from __future__ import annotations

import numpy as np

HAIR_STYLES = ("short", "long", "bun")  # the order of singer.data.synth.HAIR_STYLES
_COLOURS = ("skin", "hair", "background")
_SCALARS = ("face_rx", "face_ry", "hair_pad_x", "hair_pad_y", "hairline")
IDENTITY_DIM = 3 * len(_COLOURS) + len(_SCALARS) + 1


def identity_vector(identity: dict | None) -> np.ndarray:
    """``IDENTITY_DIM`` float32 (zeros for ``None``): colours in 0..255, shapes, style index."""
    if not identity:
        return np.zeros(IDENTITY_DIM, dtype=np.float32)
    values = [float(v) for name in _COLOURS for v in identity[name]]
    values += [float(identity[name]) for name in _SCALARS]
    values.append(float(HAIR_STYLES.index(identity["hair_style"])))
    return np.asarray(values, dtype=np.float32)


def identity_dict(vector) -> dict:
    """The inverse of :func:`identity_vector` (the renderer's ``identity`` argument)."""
    v = [float(x) for x in np.asarray(vector, dtype=np.float64).reshape(-1)]
    if len(v) != IDENTITY_DIM:
        raise ValueError(f"an identity vector has {IDENTITY_DIM} values, got {len(v)}")
    out = {name: [int(round(x)) for x in v[3 * i : 3 * i + 3]] for i, name in enumerate(_COLOURS)}
    offset = 3 * len(_COLOURS)
    out.update({name: v[offset + i] for i, name in enumerate(_SCALARS)})
    out["hair_style"] = HAIR_STYLES[int(round(v[-1])) % len(HAIR_STYLES)]
    return out
