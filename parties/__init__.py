"""Entry points that run one role each: ``secformer-party`` and ``secformer-dealer``."""
