"""``--streams-per-actor N``: N videos in one actor at once, their frames stepped together through one model
(vos_core's StreamBatcher: one batch of up to N frames per network call, each video with its own feature
bank). A GPU runs a batch of N frames in about the time of one small frame, so an actor labels up to N
times the frames; on a CPU it gains little (its convolutions are already busy at batch 1).

How the videos get into the actor together: Ray Data's actor pool sends each actor up to N tasks at once and
lets N of them run at the same time, each on its own thread (``max_concurrent_calls_per_actor``,
``enable_true_multi_threading``); each call's videos go through the actor's one batcher, which steps whichever
streams have a frame ready. A video that ends leaves the batch and the next task's video joins the next round,
without waiting for the others.
"""
from __future__ import annotations


def pool_args(streams: int) -> dict:
    """ActorPoolStrategy arguments for ``streams`` videos per actor at once."""
    if streams <= 1:
        return {"max_tasks_in_flight_per_actor": 1}
    return {"max_tasks_in_flight_per_actor": streams, "max_concurrent_calls_per_actor": streams,
            "enable_true_multi_threading": True}


def segmenter_for(segmenter, streams: int):
    """What the actor's videos run through: the Segmenter itself, or one StreamBatcher over it (same
    ``start`` / ``run`` interface) for several streams."""
    if streams <= 1:
        return segmenter
    from vos_core.inference.batcher import StreamBatcher

    return StreamBatcher(segmenter)
