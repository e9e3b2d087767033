"""Feedback: every answered turn recorded, the feedback given on it, and the replay buffer the trainer reads.

A trainer takes `ReplayBuffer(config).sample("dpo")` (or `.rows("dpo", split="train")`) and then records
what it used with `.mark_consumed(run_id, "dpo", [row["id"] for row in rows])`.
"""

from assistant.feedback.db import FeedbackDBError
from assistant.feedback.replay import ImportReport, ReplayBuffer
from assistant.feedback.store import ConversationSummary, FeedbackStore, Interaction

__all__ = [
    "ConversationSummary",
    "FeedbackDBError",
    "FeedbackStore",
    "ImportReport",
    "Interaction",
    "ReplayBuffer",
]
