"""Peer frameworks (CrypTen, SPU) on the same layer and ops, each in its own virtual environment.

Scripts here import only numpy, their framework and :mod:`benchmarks.peers.layer`, never secformer.
"""
