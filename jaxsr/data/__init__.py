"""On-the-fly training data: the reference's expression and point generator, and batching.

    >>> from jaxsr.data import Generator
    >>> sample = Generator().sample(0)
    >>> print(sample.tree, sample.x.shape, sample.prefix)

``Generator(config).sample(index)`` draws one sample (deterministic in (seed, index));
``batches(...)`` streams padded, resumable training batches generated in worker processes.
"""

from jaxsr.data.batching import Batch, BatchStream, StreamState, batches
from jaxsr.data.config import GeneratorConfig
from jaxsr.data.generator import Generator, Headers, Sample, SampleInfo

__all__ = [
    "GeneratorConfig", "Generator", "Headers", "Sample", "SampleInfo",
    "batches", "Batch", "BatchStream", "StreamState",
]
