"""The serving core stays Ray-free and MLflow-free."""

import subprocess
import sys


def test_importing_serving_does_not_import_ray_or_mlflow():
    code = ("import sys, eclm.serving, eclm.serving.scheduler, eclm.serving.wire, eclm.serving.breakdown, "
            "eclm.serving.worker; "
            "assert 'ray' not in sys.modules, 'ray imported'; assert 'mlflow' not in sys.modules, 'mlflow imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_public_api_is_exported():
    import eclm.serving as serving

    missing = [name for name in serving.__all__ if not hasattr(serving, name)]
    assert missing == []
