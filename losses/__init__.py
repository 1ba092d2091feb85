"""Training losses for video-music retrieval (pure torch functions, no model state)."""
