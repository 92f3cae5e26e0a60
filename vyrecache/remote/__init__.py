"""The remote tier: cache entries in Redis, shared between processes.

One file per concern: ``format.py`` (the stored value and key names), ``client.py`` (URLs and
the redis-py client), ``breaker.py`` (failing open), ``writer.py`` (the bounded write queue and its
thread), ``tier.py`` (``RedisTier``, which puts them together).  redis-py is imported only when a
``RedisTier`` is made.
"""

from .breaker import RemoteTierWarning
from .tier import RedisTier

__all__ = ["RedisTier", "RemoteTierWarning"]
