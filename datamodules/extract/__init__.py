"""Raw media -> dataset features (decoding, audio and video feature extractors, batch jobs)."""
