"""Server-agnostic text generation: sampling parameters, a continuous-batching engine, and its thread."""

from handlers.generation.engine import Engine
from handlers.generation.loop import EngineLoop
from handlers.generation.sampling import SamplingParams, sample
from handlers.generation.sequence import Event

__all__ = ["Engine", "EngineLoop", "Event", "SamplingParams", "sample"]
