"""Packages export lazily: loading the config stays light, and every exported name resolves."""

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["eclm.modules", "eclm.data", "eclm.data.sources", "eclm.split", "eclm.serving", "eclm.tracking",
            "eclm.pipelines", "eclm.pipelines.triggers"]


def test_loading_the_platform_config_imports_no_torch_ray_or_mlflow():
    code = ("import sys, eclm.config; eclm.config.PlatformConfig.from_dict({}); "
            "heavy = [m for m in ('torch', 'timm', 'ray', 'mlflow', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []
    assert set(module.__all__) <= set(dir(module))


def test_unknown_names_raise_attribute_error():
    import eclm.modules

    with pytest.raises(AttributeError, match="no_such_thing"):
        eclm.modules.no_such_thing  # noqa: B018


def test_serving_replan_is_the_function_not_the_submodule():
    import eclm.serving
    import eclm.serving.replan  # noqa: F401  (loading the submodule must not shadow the export)

    assert callable(eclm.serving.replan) and not isinstance(eclm.serving.replan, type(sys))


def test_catalog_matches_the_corruption_functions():
    from eclm.data.catalog import CORRUPTION_NAMES
    from eclm.data.corruptions import CORRUPTIONS

    assert tuple(CORRUPTIONS) == CORRUPTION_NAMES
