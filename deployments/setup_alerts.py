"""Dead things are noticed, bad nights tell someone: two automations on the Prefect server.

Run by `deployments/stack.sh up` (`make up`). Idempotent: blocks are saved over, automations replaced.

1. `atft silent run crashed` (always): every flow run sends a heartbeat every 30 s (prefect.yaml sets
   PREFECT_FLOWS_HEARTBEAT_FREQUENCY for each deployment); a run of an atft flow that stays silent for
   ATFT_CRASH_AFTER_S (default 180: its host died, its worker was killed) is marked Crashed. Without it a
   dead GPU host shows up only at the pipeline's 5 h deadline, and a dead cpu host never.
2. `atft run ended badly` (with ATFT_ALERT_WEBHOOK_URL): POSTs to a webhook when a run of flow `atft`
   ends Failed, Crashed, TimedOut or Cancelled (a night dropped by CANCEL_NEW is a missed night too), or
   Degraded: a nightly that did its work while the champion's live health is `degraded`
   (atft_core.nightly.health; a Completed state with that name, so it is an event of its own).
   The URL is a secret (it often carries a token): it is kept in the notification block's `secrets`,
   which the API returns obfuscated, and the block's `url` is only the `{{webhook_url}}` template.

The webhook receives JSON {"text": "<subject>: <body>", "subject": ..., "body": ...}: Slack and
Mattermost incoming webhooks read `text`; anything else reads `subject` / `body`.
Needs PREFECT_API_URL (and PREFECT_API_AUTH_STRING when the server has basic auth), as stack.sh sets.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

BLOCK = "atft-run-ended-badly"
ALERT = "atft run ended badly"
CRASH = "atft silent run crashed"
# Every flow of the project: a silent gpu stage or HPO worker is as dead as a silent pipeline.
FLOWS = ["atft", "atft-gpu-stage", "atft-hpo-worker", "atft-hpo"]
BAD_ENDINGS = ("Failed", "Crashed", "TimedOut", "Cancelled", "Degraded")
# Every state name a run ends in: after any of them a silent run is finished, not dead.
ENDINGS = ("Completed", "Failed", "Cancelled", "Crashed", "TimedOut", "Degraded")
SUBJECT = "atft run {{ flow_run.name }} ended {{ flow_run.state.name }}"
BODY = ("Flow run {{ flow_run.name }} of flow atft ended {{ flow_run.state.name }}: "
        "{{ flow_run.state.message }}. {{ flow_run|ui_url }}")


def _replace(automation) -> str:
    from prefect.automations import Automation

    try:
        Automation.read(name=automation.name).delete()
    except ValueError:
        pass  # not there yet
    return str(automation.create().id)


def setup_crash_detection(silent_s: int) -> str:
    """The automation that marks a run Crashed after `silent_s` without a heartbeat; its id."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    return _replace(Automation(
        name=CRASH,
        description=f"Mark a running atft flow run Crashed when it sends no heartbeat for {silent_s}s (its host "
                    "or worker is gone).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in ENDINGS)},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOWS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=timedelta(seconds=silent_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, name="Crashed",
                                    message=f"no heartbeat for {silent_s}s: the run's host or worker is gone (see "
                                            "the worker's log on that host)")],
    ))


def setup_alert(url: str) -> str:
    """Save the webhook block (URL as a secret) and (re)create the alert automation; the automation's id."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block = CustomWebhookNotificationBlock(
        name=BLOCK, url="{{webhook_url}}", secrets={"webhook_url": url}, method="POST",
        json_data={"text": "{{subject}}: {{body}}", "subject": "{{subject}}", "body": "{{body}}"},
        # The operator chose this URL (often an in-house alert relay on a private network), so the
        # SSRF guard for user-supplied URLs does not apply.
        allow_private_urls=True)
    block_id = block.save(BLOCK, overwrite=True)
    return _replace(Automation(
        name=ALERT,
        description=f"POST to the {BLOCK} webhook block when a run of flow atft ends {', '.join(BAD_ENDINGS)}.",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{s}" for s in BAD_ENDINGS},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": "atft"},
            posture=Posture.Reactive, threshold=1),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    ))


def main() -> int:
    silent_s = int(os.environ.get("ATFT_CRASH_AFTER_S") or 180)
    setup_crash_detection(silent_s)
    print(f"crash detection: a run with no heartbeat for {silent_s}s is marked Crashed")
    url = os.environ.get("ATFT_ALERT_WEBHOOK_URL", "").strip()
    if not url:
        print("alert: off (set ATFT_ALERT_WEBHOOK_URL to get a POST when a run of flow atft ends badly)")
        return 0
    setup_alert(url)
    print(f"alert: automation '{ALERT}' POSTs to webhook block '{BLOCK}' (URL kept as a secret) when a run of "
          f"flow atft ends {', '.join(BAD_ENDINGS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
