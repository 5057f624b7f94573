"""eclm: Ray-distributed edge-cloud continual learning.

``eclm.Platform`` and ``eclm.PlatformConfig`` are imported lazily so that ``import eclm`` (and
the Ray-free core packages) stay light.
"""

__version__ = "0.1.0"

__all__ = ["Platform", "PlatformConfig", "ConfigError", "__version__"]


def __getattr__(name: str):
    if name == "Platform":
        from eclm.platform import Platform

        return Platform
    if name in ("PlatformConfig", "ConfigError"):
        import eclm.config as config

        return getattr(config, name)
    raise AttributeError(f"module 'eclm' has no attribute {name!r}")
