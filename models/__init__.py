"""LightningModules for video-music retrieval (VM-NET, ...) and their shared building blocks."""
