"""What a video shows outside its salient span (`PlantedSpec.filler`).

`same`: a per-video distractor content drawn exactly like a pair's content (a random style's
centre plus `tau` spread). Filler frames then look like some other song's salient frames, so
no single frame tells whether it is salient: only which content the pair shares does.

`background`: a per-video content from a background distribution that no song uses (think
credits, crowd shots, black frames). Song contents lie around style centres drawn from
N(0, I); the background has its own BACKGROUND_STYLES centres, drawn from N(0, I) and then
moved BACKGROUND_SHIFT units along one fixed random direction of content space, plus the same
`tau` spread. The feature map renders both through the same network, so salient and filler
frames are distinguishable by what they show (a probe on single frames separates them),
which is the condition a saliency model can exploit.
"""

from __future__ import annotations

import numpy as np

FILLERS = ("same", "background")
BACKGROUND_STYLES = 4
BACKGROUND_SHIFT = 4.0


def background_centres(seed: int, stream: int, styles: int, content_dim: int) -> np.ndarray:
    """[BACKGROUND_STYLES, content_dim]: fixed by (seed, stream) alone, whatever the sizes."""
    rng = np.random.default_rng([seed, stream])
    direction = rng.normal(0.0, 1.0, content_dim)
    direction /= np.linalg.norm(direction)
    centres = rng.normal(0.0, 1.0, (BACKGROUND_STYLES, content_dim))
    return centres + BACKGROUND_SHIFT * direction


def draw_filler(kind: str, rng: np.random.Generator, n: int, style_centres: np.ndarray,
                background: np.ndarray, tau: float) -> np.ndarray:
    """Filler contents [n, content_dim] of `kind` (module docstring) drawn from `rng`."""
    if kind == "same":
        centres = style_centres
    elif kind == "background":
        centres = background
    else:
        raise ValueError(f"filler={kind!r} must be one of {', '.join(FILLERS)}")
    which = rng.integers(0, len(centres), n)
    return centres[which] + tau * rng.normal(0.0, 1.0, (n, style_centres.shape[1]))
