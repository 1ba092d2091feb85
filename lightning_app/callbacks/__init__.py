"""Callbacks: Recall@K evaluation; SSVMR self-training and back retrieval (training pairs)."""

from lightning_app.callbacks.back_retrieval import BackRetrieval
from lightning_app.callbacks.recall_at_k import RecallAtK
from lightning_app.callbacks.self_training import SelfTraining

__all__ = ["BackRetrieval", "RecallAtK", "SelfTraining"]
