"""Raw media -> dataset features (decoding, audio and video feature extractors, batch jobs)."""

import torch


def default_device() -> torch.device:
    """Where extraction runs unless told otherwise: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
