"""The one-line progress reporter."""

import io
import re

from screener_plans.progress import Progress


def test_items_done_earlier_count_but_do_not_make_a_rate():
    out = io.StringIO()
    bar = Progress(3, "predict", stream=out, interval=0.0)
    bar.skip()
    assert "predict 1/3 [ 33%] 1 already done" in out.getvalue() and "/s" not in out.getvalue()
    bar.update()
    bar.update()
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("predict 3/3 [100%]") and re.search(r"\d+\.\d\d cases/s", last)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_tqdm_bar_that_counts_skipped_items():
    out = _Terminal()
    bar = Progress(3, "predict", stream=out, interval=0.0)
    assert bar._bar is not None
    bar.skip()
    bar.update()
    bar.update()
    last = out.getvalue().split("\r")[-1]
    assert "predict" in last and "100%" in last and "3/3" in last and "1 already done" in last
    assert bar._bar.disable  # closed at the total
