"""`kvcodec eval-progressive`: bad arguments fail in one line, before a model loads."""

import pytest

from kvcodec.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "p1>=x"], "--policy: not an adaptive policy"),
        (["--policy", "p1>=1.5"], "--policy"),
        (["--planes-per-message", "0"], "--planes-per-message takes"),
        (["--planes-per-message", "3+x"], "--planes-per-message takes"),
        (["--stream", "int4"], "needs every chain to be one 'prog' stage"),
        (["--stream", "k=prog8 v=prog4"], "prog"),
        (["--fixed", "two"], "expected numbers"),
    ],
)
def test_bad_arguments_exit_2(args, message, capsys, tmp_path, monkeypatch):
    from kvcodec import cli

    monkeypatch.setattr(cli, "_load", lambda *a, **k: pytest.fail("the model must not load"))
    with pytest.raises(SystemExit) as exc:
        main(["eval-progressive", "--task", "squad", "--data-dir", str(tmp_path), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
