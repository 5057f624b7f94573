"""Root causes of remote failures: the actor's exception type and full message, no colour codes."""

from __future__ import annotations

import pytest

from eclm.failures import ActorCallError, ActorFailure, exception_from_traceback, one_line, root_cause_line

# The text of Ray's ActorDiedError for an actor whose constructor raised (Ray 2.60, as observed).
INIT_FAILURE = (
    "The actor died because of an error raised in its creation task, "
    "\x1b[36mray::eclm-cloud-demo:CloudService.__init__()\x1b[39m (pid=8412, ip=127.0.0.1, actor_id=f322, "
    "repr=<eclm.pipelines.cloud_service.CloudService object at 0x7f0d>)\n"
    '  File "/repo/eclm/pipelines/cloud_service.py", line 50, in __init__\n'
    "    self.model: ModularModel = modularize(\n"
    "                               ^^^^^^^^^^^\n"
    '  File "/venv/timm/models/_factory.py", line 121, in create_model\n'
    "    raise RuntimeError('Unknown model (%s)' % model_name)\n"
    "RuntimeError: Unknown model (resnet_doesnotexist)\n"
)


def test_the_exception_a_remote_traceback_ends_with():
    assert exception_from_traceback(INIT_FAILURE) == ("RuntimeError", "Unknown model (resnet_doesnotexist)")


def test_a_chained_multi_line_exception_keeps_the_last_one_whole():
    text = (
        "Traceback (most recent call last):\n"
        '  File "a.py", line 1, in f\n    g()\n'
        "KeyError: 'x'\n\nThe above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        '  File "b.py", line 2, in h\n    raise ConfigError(msg)\n'
        "eclm.config.ConfigError: c.yaml: invalid configuration:\n  data.path: missing\n  cycles: negative\n"
    )
    kind, message = exception_from_traceback(text)
    assert kind == "ConfigError"
    assert message == "c.yaml: invalid configuration:\n  data.path: missing\n  cycles: negative"


def test_text_without_a_traceback_is_returned_as_is():
    assert exception_from_traceback("The actor died unexpectedly.") == (None, "The actor died unexpectedly.")


@pytest.mark.parametrize(("error", "line"), [
    # the platform's wrapper around a failure: the root cause is the first "SomeError: ..." in it
    (RuntimeError("cloud: dead: RuntimeError: Unknown model (x)"), "RuntimeError: Unknown model (x)"),
    ("derive: cloud: error: BudgetTooSmallError: device 'phone': budget params=819 is below 24042",
     "BudgetTooSmallError: device 'phone': budget params=819 is below 24042"),
    (ValueError("weights do not match\n  layer1: shape"), "ValueError: weights do not match layer1: shape"),
    (KeyError("phone"), "KeyError: 'phone'"),
    (RuntimeError("\x1b[31mred\x1b[0m text"), "RuntimeError: red text"),
])
def test_root_cause_line(error, line):
    assert root_cause_line(error) == line


def test_an_actor_call_error_lists_each_failed_call_by_key():
    err = ActorCallError({
        "cloud": ActorFailure("cloud", "error", "ValueError: bad spec", "ValueError"),
        "phone": ActorFailure("phone", "timeout", "TimeoutError: no answer within 600 s", "TimeoutError"),
    })
    assert str(err) == "cloud: ValueError: bad spec; phone: TimeoutError: no answer within 600 s"
    assert root_cause_line(err) == str(err) and isinstance(err, RuntimeError)


def test_one_line_collapses_and_cuts():
    assert one_line("a\n  b\tc\n") == "a b c"
    cut = one_line("x" * 1000, limit=50)
    assert len(cut) == 50 and cut.endswith("...")
