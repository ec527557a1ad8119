"""MPC protocols. Each takes the runtime ``rt`` and shares (uint64 arrays) and returns shares.

- :mod:`secformer.protocols.base` -- open, reveal, Beaver mul/square/matmul, truncation,
  comparison (LTZ), ReLU: the building blocks every later protocol uses.
"""
