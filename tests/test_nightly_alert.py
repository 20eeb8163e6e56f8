"""A degraded night is a named state with an alert: the run ends "Degraded" and the webhook is called.

Real parts: the session's Prefect API (its automations and actions services run), the automation
`make up` creates (deployments/setup_alerts.py), a webhook receiver on loopback, and the pipeline's
own way of ending a degraded night (flows.pipeline returns that state).
"""

from __future__ import annotations

import threading
import time
from http.server import ThreadingHTTPServer

from tests.test_e2e_prefect import _Receiver


def test_a_degraded_night_ends_in_its_named_state_and_the_alert_fires(prefect_harness):
    from prefect import flow
    from prefect.automations import Automation

    from deployments.setup_alerts import ALERT, setup_alert
    from flows.pipeline import degraded_state

    _Receiver.posts = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    setup_alert(f"http://127.0.0.1:{hook.server_address[1]}/hook")

    @flow(name="atft")  # the automation watches flow `atft`; the state is the pipeline's own
    def night() -> dict:
        return degraded_state({"night": "2024-01-31"}, ["the last 20 nights' mean live RankIC fell"])

    try:
        state = night(return_state=True)
        assert state.is_completed() and state.name == "Degraded" and state.result() == {"night": "2024-01-31"}
        deadline = time.monotonic() + 60
        while not _Receiver.posts and time.monotonic() < deadline:
            time.sleep(0.5)
        [post] = _Receiver.posts
        assert "ended Degraded" in post["subject"] and "mean live RankIC fell" in post["body"]
    finally:
        Automation.read(name=ALERT).delete()  # the session's other flows must not call a stopped receiver
        hook.shutdown()
