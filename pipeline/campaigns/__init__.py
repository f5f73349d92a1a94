"""Campaign jobs: specs, the Ray runner, reports with lift, and the scheduler."""

from pipeline.campaigns.assignment import HOLDOUT, assign_arms
from pipeline.campaigns.lift import Lift, difference_interval, wilson_interval
from pipeline.campaigns.spec import SAFE_ATTRIBUTES, CampaignSpec, parse_spec
from pipeline.campaigns.store import (
    UnknownCampaignError,
    list_campaigns,
    list_runs,
    load_campaign,
    run_record,
    save_campaign,
    set_campaign_status,
)

__all__ = [
    "HOLDOUT",
    "SAFE_ATTRIBUTES",
    "CampaignSpec",
    "Lift",
    "UnknownCampaignError",
    "assign_arms",
    "difference_interval",
    "list_campaigns",
    "list_runs",
    "load_campaign",
    "parse_spec",
    "run_record",
    "save_campaign",
    "set_campaign_status",
    "wilson_interval",
]
