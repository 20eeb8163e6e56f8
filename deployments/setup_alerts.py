"""A failed nightly tells someone: an automation on flow `atft`'s Failed runs that POSTs to a webhook.

Run by `deployments/stack.sh up` (`make up`). Idempotent: the block is saved over, the automation
replaced. With ATFT_ALERT_WEBHOOK_URL unset it only says how to turn the alert on.

The webhook receives JSON {"text": "<subject>: <body>", "subject": ..., "body": ...}: Slack and
Mattermost incoming webhooks read `text`; anything else reads `subject` / `body`.
Needs PREFECT_API_URL (and PREFECT_API_AUTH_STRING when the server has basic auth), as stack.sh sets.
"""

from __future__ import annotations

import os
import sys

BLOCK = "atft-run-failed"
AUTOMATION = "atft run failed"
SUBJECT = "atft run {{ flow_run.name }} failed"
BODY = ("Flow run {{ flow_run.name }} of flow atft ended {{ flow_run.state.name }}: "
        "{{ flow_run.state.message }}. {{ flow_run|ui_url }}")


def setup(url: str) -> str:
    """Save the webhook block and (re)create the automation; returns the automation's id."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block = CustomWebhookNotificationBlock(
        name=BLOCK, url=url, method="POST",
        json_data={"text": "{{subject}}: {{body}}", "subject": "{{subject}}", "body": "{{body}}"},
        # The operator chose this URL (often an in-house alert relay on a private network), so the
        # SSRF guard for user-supplied URLs does not apply.
        allow_private_urls=True)
    block_id = block.save(BLOCK, overwrite=True)
    try:
        Automation.read(name=AUTOMATION).delete()
    except ValueError:
        pass  # not there yet
    automation = Automation(
        name=AUTOMATION,
        description="POST to the atft-run-failed webhook block when a run of flow atft fails (gate or crash).",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": "atft"},
            posture=Posture.Reactive, threshold=1),
        actions=[SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)],
    ).create()
    return str(automation.id)


def main() -> int:
    url = os.environ.get("ATFT_ALERT_WEBHOOK_URL", "").strip()
    if not url:
        print("alert: off (set ATFT_ALERT_WEBHOOK_URL to get a POST when a run of flow atft fails)")
        return 0
    setup(url)
    print(f"alert: automation '{AUTOMATION}' POSTs to webhook block '{BLOCK}' when a run of flow atft fails")
    return 0


if __name__ == "__main__":
    sys.exit(main())
