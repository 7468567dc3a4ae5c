"""A reply's path, one module a step: a provider's events (providers/, chosen by catalog.py) are run by a
Generation (generation.py, opened and stopped by control.py, saved by checkpoints.py) into a LiveReply's parts
(live.py), shared with other workers (fanout.py), and written to each browser as SSE (relay.py, sse.py) with
the markdown rendered as it grows (rendering.py). admission.py and lifecycle.py keep the worker within its
capacity and its rows honest across restarts."""
