"""Imported only by the parse pool's fork server (see ``collect._make_pool``).

The fork server imports this once; every parse worker then starts as a fork of it with the
parsing stack and the language model already in memory (shared copy-on-write), instead of
each worker loading the model again (0.6 s of CPU each) while the fetching needs the CPU.
"""

from pipeline.collect import _warm_worker

_warm_worker()
