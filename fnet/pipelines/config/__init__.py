"""Structured config schemas of ``conf/`` and their check at startup (see :mod:`fnet.pipelines.config.validate`)."""

from fnet.pipelines.config.validate import ConfigError, check_target_kwargs, register_configs, validate_config

__all__ = ["ConfigError", "check_target_kwargs", "register_configs", "validate_config"]
