"""Callbacks: Recall@K evaluation (exact, chunked, distributed-safe)."""

from lightning_app.callbacks.recall_at_k import RecallAtK

__all__ = ["RecallAtK"]
