"""Build the chart's two Grafana dashboards with Grafana's foundation SDK, and write them as JSON.

The files in charts/voicelane/dashboards/ are generated from this module; change the panels here:

- voicelane-ttfa.json, "VoiceLane / Time to first audio": are users hearing speech in time?
- voicelane-lane.json, "VoiceLane / Lane health": why not?

    python -P -m voicelane.delivery_dashboards --write   # rewrite the files that differ
    python -P -m voicelane.delivery_dashboards --check   # exit 1 naming each stale file

Every sidecar query filters on the `cluster`, `namespace`, `lane` and `pod` variables; recorded
series are per lane (no `pod`), operator series and the SLO constant only per cluster. A delivery
tool like voicelane.delivery: the SDK is a development dependency, and the sidecar and the operator
never import this module.
"""

from __future__ import annotations

import itertools
import json
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

from voicelane.sidecar.config import TTFATargets

REPO_ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = Path("charts/voicelane/dashboards")
TTFA_FILE = DASHBOARD_DIR / "voicelane-ttfa.json"
LANE_FILE = DASHBOARD_DIR / "voicelane-lane.json"

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# A gauge every sidecar exports from its first scrape on, so the variables list every sidecar.
VARIABLE_SOURCE = "voicelane_guardian_blocked"
RATE_WINDOW = "$__rate_interval"
WHOLE_RANGE = "$__range"

# Label matchers, the way Grafana expands the multi-value variables ("All" is `.*`, which also
# matches a series without the label: a single-cluster Prometheus has no `cluster`).
CLUSTER = 'cluster=~"$cluster"'
NAMESPACE = 'namespace=~"$namespace"'
LANE = 'lane=~"$lane"'
POD = 'pod=~"$pod"'
LANE_MATCHERS = (CLUSTER, NAMESPACE, LANE)
SIDECAR_MATCHERS = (*LANE_MATCHERS, POD)
# The query variables, widest first: name, label, and the matcher that narrows the ones after it.
NARROWING = (
    ("cluster", "Cluster", CLUSTER),
    ("namespace", "Namespace", NAMESPACE),
    ("lane", "Lane", LANE),
    ("pod", "Pod", POD),
)

# A lane's target drawn over its latencies: a dashed red line, not filled.
TARGET_LINE = [
    model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
    model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
    model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
]
# Threshold steps as (colour, from value): one colour for every value.
NEUTRAL = (("green", None),)
TEXT = (("text", None),)

PanelBuilder = timeseries.Panel | stat.Panel | statetimeline.Panel | heatmap.Panel


# --- PromQL ---------------------------------------------------------------------------------------


def _series(metric: str, matchers: Sequence[str], extra: Sequence[str]) -> str:
    return f"{metric}{{{', '.join((*matchers, *extra))}}}"


def sidecar(metric: str, *extra: str) -> str:
    """A sidecar series in the selected clusters, namespaces, lanes and pods."""
    return _series(metric, SIDECAR_MATCHERS, extra)


def per_lane(metric: str, *extra: str) -> str:
    """A series the rule file records per lane: it has no `pod` to filter on."""
    return _series(metric, LANE_MATCHERS, extra)


def per_cluster(metric: str) -> str:
    """An operator series or a constant: the operator runs in its own namespace, with no lane."""
    return _series(metric, (CLUSTER,), ())


def summed(function: str, by: str, metric: str, *extra: str, window: str = RATE_WINDOW) -> str:
    """`sum by (by) (function(series[window]))` of a sidecar counter."""
    return f"sum by ({by}) ({function}({sidecar(metric, *extra)}[{window}]))"


def quantile(q: str, by: str, metric: str, *extra: str) -> str:
    """The q-quantile of a sidecar histogram per `by` (empty: over everything selected)."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({sidecar(metric + '_bucket', *extra)}[{RATE_WINDOW}])))"


def share(metric: str, by: str, condition: str, function: str = "rate", window: str = RATE_WINDOW) -> str:
    """The share of a sidecar counter's increase that meets `condition`, per `by`.

    `or 0 * total` makes it 0 rather than no data when nothing met the condition.
    """
    met = summed(function, by, metric, condition, window=window)
    total = summed(function, by, metric, window=window)
    return f"({met} or 0 * {total})\n/\n{total}"


def burn_rate(window: str) -> str:
    """How fast a lane's class spends its error budget over `window` (recorded by the rule file)."""
    ratio = per_lane(f"namespace_lane_request_class:voicelane_ttfa_within_target:ratio_rate{window}")
    objective = per_cluster("voicelane:ttfa_slo_objective:ratio")
    # on (cluster): each cluster's lanes against their own cluster's objective.
    return f"(1 - {ratio})\n/ on (cluster) group_left ()\n(1 - {objective})"


@dataclass(frozen=True)
class Query:
    """One query of a panel: the PromQL expression and the legend of its series."""

    expr: str
    legend: str


def _targets(
    queries: Sequence[Query], *, instant: bool = False, heatmap_format: bool = False
) -> list[Builder[Dataquery]]:
    targets: list[Builder[Dataquery]] = []
    for index, query in enumerate(queries):
        target = (
            prometheus.Dataquery()
            .datasource(DATASOURCE)
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(string.ascii_uppercase[index])
            .editor_mode(QueryEditorMode.CODE)
        )
        target = target.instant() if instant else target.range()
        if heatmap_format:
            target = target.format(PromQueryFormat.HEATMAP)
        targets.append(target)
    return targets


# --- panels ---------------------------------------------------------------------------------------


def _thresholds(steps: Sequence[tuple[str, float | None]]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for color, value in steps])
    )


def _colors(mode: model.FieldColorModeId) -> dashboard_builders.FieldColor:
    return dashboard_builders.FieldColor().mode(mode)


def graph(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int,
    bars: bool = False,
    stacked: bool = False,
    thresholds: Sequence[tuple[str, float | None]] = NEUTRAL,
    draw_thresholds: bool = False,
    max_value: float | None = None,
    decimals: int | None = None,
) -> timeseries.Panel:
    """A time series panel: lines (or bars) from zero, the legend as a table with last and max."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .span(width)
        .height(8)
        .unit(unit)
        .min(0)
        .color_scheme(_colors(model.FieldColorModeId.PALETTE_CLASSIC))
        .thresholds(_thresholds(thresholds))
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(60 if bars else 10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .axis_placement(common.AxisPlacement.AUTO)
        .stacking(
            common_builders.StackingConfig()
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
            .group("A")
        )
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED if draw_thresholds else common.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    if max_value is not None:
        panel = panel.max(max_value)
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def class_against_targets(title: str, request_class: str, default_target_s: float) -> timeseries.Panel:
    """p50/p95/p99 of one class, and each selected lane's own target for it as a dashed red line."""
    quantiles = [
        Query(quantile(q, "", "voicelane_ttfa_seconds", request_class), f"p{q[2:4]}") for q in ("0.50", "0.95", "0.99")
    ]
    targets = Query(
        "max by (cluster, namespace, lane) "
        f"({per_lane('namespace_lane_request_class:voicelane_ttfa_target_seconds:max', request_class)})",
        "target {{lane}}",
    )
    description = (
        "p50/p95/p99 of time from request received to first audio byte sent. The dashed red line is each "
        f"lane's own target for the class (spec.policy.ttfa.targets; {default_target_s:g} s unless the lane sets one)."
    )
    return graph(title, description, "s", [*quantiles, targets], width=8).override_by_regexp("^target ", TARGET_LINE)


def single_stat(
    title: str,
    description: str,
    unit: str,
    query: Query,
    *,
    width: int,
    decimals: int,
    thresholds: Sequence[tuple[str, float | None]] = TEXT,
) -> stat.Panel:
    """One number per series, its latest value, coloured by the thresholds."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([query], instant=True))
        .span(width)
        .height(4)
        .unit(unit)
        .decimals(decimals)
        .color_scheme(_colors(model.FieldColorModeId.THRESHOLDS))
        .thresholds(_thresholds(thresholds))
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .text_mode(common.BigValueTextMode.AUTO)
    )


def states(
    title: str, description: str, query: Query, zero: tuple[str, str], one: tuple[str, str]
) -> statetimeline.Panel:
    """A 0/1 gauge as named, coloured states over time, one row per series."""
    mapping = model.ValueMap(
        options={
            "0": model.ValueMappingResult(text=zero[0], color=zero[1]),
            "1": model.ValueMappingResult(text=one[0], color=one[1]),
        }
    )
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([query]))
        .span(8)
        .height(8)
        .mappings([mapping])
        .color_scheme(_colors(model.FieldColorModeId.THRESHOLDS))
        .thresholds(_thresholds([("green", None), ("red", 1)]))
        .fill_opacity(80)
        .line_width(0)
        .show_value(common.VisibilityMode.AUTO)
        .merge_values(True)
        .align_value(common.TimelineValueAlignment.LEFT)
        .row_height(0.9)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )


@dataclass(frozen=True)
class Section:
    """A row and the panels under it, laid out left to right, wrapping at the grid's 24 columns."""

    title: str
    panels: Sequence[PanelBuilder]


def _dashboard(
    uid: str, title: str, description: str, link: tuple[str, str], sections: Sequence[Section]
) -> model.Dashboard:
    """Settings both dashboards share, the five variables, and the sections with ids in order."""
    link_title, link_url = link
    board = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["voicelane"])
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .timezone("browser")
        .refresh("30s")
        .time("now-3h", "now")
        .version(1)
        .annotation(
            dashboard_builders.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .link(
            dashboard_builders.DashboardLink(link_title)
            .type(model.DashboardLinkType.LINK)
            .url(link_url)
            .keep_time(True)
            .include_vars(True)
            .icon("dashboard")
            .as_dropdown(False)
            .target_blank(False)
            .tags([])
            .tooltip("")
        )
        .variables(variables())
    )
    ids = itertools.count(1)
    for section in sections:
        board = board.with_row(dashboard_builders.Row(section.title).id(next(ids)))
        for panel in section.panels:
            board = board.with_panel(panel.id(next(ids)))
    return board.build()


def variables() -> list[Builder[model.VariableModel]]:
    """The data source, then cluster, namespace, lane and pod, each narrowed by those before it."""
    datasource = dashboard_builders.DatasourceVariable("datasource").label("Data source").type("prometheus").regex("")
    chosen: list[str] = []
    narrowing: list[Builder[model.VariableModel]] = []
    for name, label, matcher in NARROWING:
        source = f"{VARIABLE_SOURCE}{{{', '.join(chosen)}}}" if chosen else VARIABLE_SOURCE
        narrowing.append(
            dashboard_builders.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query({"query": f"label_values({source}, {name})", "refId": f"{name}-variable"})
            .include_all(True)
            .multi(True)
            .all_value(".*")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .hide(model.VariableHide.DONT_HIDE)
            .regex("")
        )
        chosen.append(matcher)
    return [datasource, *narrowing]


# --- VoiceLane / Time to first audio --------------------------------------------------------------


def ttfa_dashboard() -> model.Dashboard:
    requests = "voicelane_ttfa_requests_total"
    overview = Section(
        "Overview",
        [
            single_stat(
                "Spoken requests / s",
                "Requests that produced first audio, all classes.",
                "reqps",
                Query(f"sum(rate({sidecar(requests)}[{RATE_WINDOW}]))", "requests/s"),
                width=4,
                decimals=2,
            ),
            single_stat(
                "Within target (time range)",
                "Share of spoken requests whose first audio byte left within the class target, over the "
                "dashboard's time range. The SLO objective is 99 %.",
                "percentunit",
                Query(
                    share(requests, "request_class", 'within_target="true"', "increase", WHOLE_RANGE),
                    "{{request_class}}",
                ),
                width=8,
                decimals=1,
                thresholds=[("red", None), ("orange", 0.95), ("green", 0.99)],
            ),
            single_stat(
                "p95 TTFA (time range)",
                "95th percentile of time to first audio per class over the time range.",
                "s",
                Query(
                    "histogram_quantile(0.95, sum by (request_class, le) "
                    f"(increase({sidecar('voicelane_ttfa_seconds_bucket')}[{WHOLE_RANGE}])))",
                    "{{request_class}}",
                ),
                width=6,
                decimals=2,
            ),
            single_stat(
                "Fallbacks (time range)",
                "Requests spoken from the original text because the model missed its deadline or failed. "
                "Zero when none happened.",
                "short",
                Query(
                    f"sum(increase({sidecar('voicelane_fallbacks_total')}[{WHOLE_RANGE}])) or vector(0)", "fallbacks"
                ),
                width=3,
                decimals=0,
                thresholds=[("green", None), ("orange", 1)],
            ),
            single_stat(
                "Sidecar TTFA alerts (time range)",
                "Alerts the sidecars raised themselves (p95 over target, consecutive slow requests). "
                "Zero when none happened.",
                "short",
                Query(f"sum(increase({sidecar('voicelane_ttfa_alerts_total')}[{WHOLE_RANGE}])) or vector(0)", "alerts"),
                width=3,
                decimals=0,
                thresholds=[("green", None), ("red", 1)],
            ),
        ],
    )
    # A lane may set its own targets; the fixed lines of "p95 by class" are the sidecar's defaults.
    defaults = TTFATargets()
    class_targets = {"chat": defaults.chat, "notification": defaults.notification, "email": defaults.email_tldr}
    p95_by_class = graph(
        "p95 by class",
        "95th percentile of time to first audio, every class on one axis; each class's default target is "
        "drawn in its colour.",
        "s",
        [Query(quantile("0.95", "request_class", "voicelane_ttfa_seconds"), "{{request_class}} p95")],
        width=12,
    )
    for request_class, target_s in class_targets.items():
        p95_by_class = p95_by_class.override_by_regexp(
            f"{request_class}.*",
            [
                model.DynamicConfigValue(id_val="custom.thresholdsStyle", value={"mode": "dashed"}),
                model.DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [{"color": "transparent", "value": None}, {"color": "red", "value": target_s}],
                    },
                ),
            ],
        )
    per_class = Section(
        "Time to first audio per class",
        [
            class_against_targets(
                "Chat: time to first audio against the lane's target", 'request_class="chat"', class_targets["chat"]
            ),
            class_against_targets(
                "Notification: time to first audio against the lane's target",
                'request_class="notification"',
                class_targets["notification"],
            ),
            class_against_targets(
                "Email TL;DR: time to first audio against the lane's target",
                'request_class=~"email|email_tldr"',
                class_targets["email"],
            ),
            graph(
                "Share within target by class",
                "Share of spoken requests per class whose first audio met the class target. The dashed line is "
                "the 99 % objective.",
                "percentunit",
                [Query(share(requests, "request_class", 'within_target="true"'), "{{request_class}}")],
                width=12,
                thresholds=[("red", None), ("green", 0.99)],
                draw_thresholds=True,
                max_value=1,
            ),
            p95_by_class,
            ttfa_heatmap(),
        ],
    )
    stages = Section(
        "Where the time goes",
        [
            graph(
                "Mean time per stage",
                "Average time spent in each stage, stacked in request order; each stage runs from the previous "
                "recorded mark: admitted (edge, cache, admission), dispatched (queue wait, where recorded), "
                "first_token (the model; includes the queue wait when no dispatched mark is recorded), "
                "first_segment (segmenter), tts_first_byte (speech synthesis), first_audio_sent (response). "
                "The stack is the mean time to first audio.",
                "s",
                [
                    Query(
                        summed("rate", "stage", "voicelane_stage_seconds_sum", 'stage!="done"')
                        + "\n/\n"
                        + summed("rate", "stage", "voicelane_stage_seconds_count", 'stage!="done"'),
                        "{{stage}}",
                    )
                ],
                width=12,
                bars=True,
                stacked=True,
            ),
            graph(
                "p95 per stage",
                "95th percentile of each stage's duration.",
                "s",
                [Query(quantile("0.95", "stage", "voicelane_stage_seconds", 'stage!="done"'), "{{stage}}")],
                width=12,
            ),
            queue_wait(
                "Time waiting for a model slot (the dispatched stage), p50 and p95 per priority: 0 chat and "
                "notifications, 1 email TL;DR, 2 email segments (idle only)."
            ),
            first_token(width=8, description="p50 and p95 from dispatch to the model's first token, per tier."),
            graph(
                "TTS first byte by class",
                "p95 of the tts_first_byte stage: from the first text segment to the first synthesized audio byte.",
                "s",
                [
                    Query(
                        quantile("0.95", "request_class", "voicelane_stage_seconds", 'stage="tts_first_byte"'),
                        "{{request_class}}",
                    )
                ],
                width=8,
            ),
            graph(
                "Fallbacks by class and reason",
                "Requests spoken from their original text: deadline (no model segment within the class target "
                "minus the expected TTS time) or model_failure.",
                "reqps",
                [
                    Query(
                        summed("rate", "request_class, reason", "voicelane_fallbacks_total"),
                        "{{request_class}} {{reason}}",
                    )
                ],
                width=12,
            ),
            graph(
                "Sidecar TTFA alerts",
                "Alerts raised inside the sidecars (for users without Prometheus): consecutive_slow and "
                "p95_over_target, per class.",
                "short",
                [
                    Query(
                        summed("increase", "request_class, kind", "voicelane_ttfa_alerts_total"),
                        "{{request_class}} {{kind}}",
                    )
                ],
                width=12,
                bars=True,
                decimals=0,
            ),
        ],
    )
    slo = Section(
        "SLO (recording rules, per lane)",
        [
            graph(
                "Error budget burn rate",
                "How fast each class spends its error budget (1 % of requests over target) per window; 1 spends "
                "it exactly over the SLO period. Pages at 14.4 (1h and 5m) and 6 (6h and 30m), tickets at 1 "
                "(3d and 6h). Needs the rules in charts/voicelane/rules loaded; not filtered by pod.",
                "short",
                [
                    Query(burn_rate(window), f"{{{{lane}}}} {{{{request_class}}}} {window}")
                    for window in ("5m", "1h", "6h")
                ],
                width=12,
                thresholds=[("green", None), ("orange", 6), ("red", 14.4)],
                draw_thresholds=True,
                decimals=1,
            ),
            graph(
                "p95 relative to the lane's class target",
                "Lane p95 over the last 5 minutes divided by the class target: above 1 is over target.",
                "percentunit",
                [
                    Query(
                        per_lane(
                            "namespace_lane_request_class:voicelane_ttfa_seconds:quantile_rate5m", 'quantile="0.95"'
                        )
                        + "\n/ on (cluster, namespace, lane, request_class) group_left ()\n"
                        + per_lane("namespace_lane_request_class:voicelane_ttfa_target_seconds:max"),
                        "{{lane}} {{request_class}}",
                    )
                ],
                width=12,
                thresholds=[("green", None), ("red", 1)],
                draw_thresholds=True,
            ),
            single_stat(
                "Within target, last 3 days",
                "Share of spoken requests within target over 3 days (the slow-burn window), per lane and class.",
                "percentunit",
                Query(
                    per_lane("namespace_lane_request_class:voicelane_ttfa_within_target:ratio_rate3d"),
                    "{{lane}} {{request_class}}",
                ),
                width=24,
                decimals=2,
                thresholds=[("red", None), ("green", 0.99)],
            ),
        ],
    )
    return _dashboard(
        "voicelane-ttfa",
        "VoiceLane / Time to first audio",
        "Time to first audio per class, the share within target, where the time goes, and the SLO burn.",
        ("Lane health", "/d/voicelane-lane/voicelane-lane-health"),
        [overview, per_class, stages, slo],
    )


def ttfa_heatmap() -> heatmap.Panel:
    """The TTFA histogram's buckets over time, as Prometheus has them (no re-bucketing in Grafana)."""
    return (
        heatmap.Panel()
        .title("TTFA distribution")
        .description(
            "How many requests fell into each TTFA bucket. Bucket edges sit on the class targets "
            "(2.5, 3.0, 3.5 s) and are fine under one second."
        )
        .datasource(DATASOURCE)
        .targets(
            _targets(
                [Query(summed("increase", "le", "voicelane_ttfa_seconds_bucket"), "{{le}}")],
                heatmap_format=True,
            )
        )
        .span(24)
        .height(8)
        .scale_distribution(common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LINEAR))
        .calculate(False)
        .cell_gap(1)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .fill("dark-orange")
            .reverse(False)
        )
        .y_axis(heatmap.YAxisConfig().unit("s").axis_placement(common.AxisPlacement.LEFT))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.AUTO))
        .mode(common.TooltipDisplayMode.SINGLE)
        .hide_y_histogram()
        .show_legend()
        .exemplars_color("rgba(255,0,255,0.7)")
        # Empty buckets stay blank rather than painted as the lowest colour.
        .filter_values(heatmap.FilterValueRange().le(1e-09))
    )


# --- panels both dashboards have ------------------------------------------------------------------


def queue_wait(description: str) -> timeseries.Panel:
    metric = "voicelane_queue_wait_seconds"
    return graph(
        "Queue wait by priority",
        description,
        "s",
        [Query(quantile(q, "priority", metric), f"P{{{{priority}}}} p{q[2:4]}") for q in ("0.50", "0.95")],
        width=8,
    )


def first_token(width: int, description: str) -> timeseries.Panel:
    metric = "voicelane_upstream_time_to_first_token_seconds"
    return graph(
        "Model time to first token by tier",
        description,
        "s",
        [Query(quantile(q, "tier", metric), f"{{{{tier}}}} p{q[2:4]}") for q in ("0.50", "0.95")],
        width=width,
    )


def per_second(
    title: str, description: str, unit: str, by: str, metric: str, legend: str, *extra: str
) -> timeseries.Panel:
    """A sidecar counter's rate, summed per `by`, as a third of the row."""
    return graph(
        title,
        description,
        unit,
        [Query(summed("rate", by, metric, *extra), legend)],
        width=8,
    )


# --- VoiceLane / Lane health ----------------------------------------------------------------------


def lane_dashboard() -> model.Dashboard:
    requests = "voicelane_requests_total"
    traffic = Section(
        "Traffic and errors",
        [
            per_second(
                "Requests by endpoint and outcome",
                "Finished requests per second: endpoint speak, text or a transparent API; outcome ok or the error "
                "code the client got.",
                "reqps",
                "endpoint, outcome",
                requests,
                "{{endpoint}} {{outcome}}",
            ),
            graph(
                "Error ratio by endpoint",
                "Share of requests that did not end ok (includes 429/503 refusals).",
                "percentunit",
                [Query(share(requests, "endpoint", 'outcome!="ok"'), "{{endpoint}}")],
                width=8,
                max_value=1,
            ),
            per_second(
                "Errors by code",
                "Requests that did not end ok, by the error code returned to the client.",
                "reqps",
                "outcome",
                requests,
                "{{outcome}}",
                'outcome!="ok"',
            ),
            per_second(
                "Upstream errors by tier and kind",
                "Failed calls to the model tiers (before or after the first token).",
                "reqps",
                "tier, kind",
                "voicelane_upstream_errors_total",
                "{{tier}} {{kind}}",
            ),
            per_second(
                "Speech syntheses by backend and outcome",
                "TTS syntheses started per second (one per spoken segment).",
                "ops",
                "backend, outcome",
                "voicelane_tts_syntheses_total",
                "{{backend}} {{outcome}}",
            ),
            graph(
                "Configuration reloads",
                "Reloads of the lane's ConfigMap by result; a rejected reload keeps the old configuration. Zero "
                "when there were none.",
                "short",
                [
                    Query(
                        summed("increase", "result", "voicelane_config_reloads_total")
                        + ' or label_replace(vector(0), "result", "none", "", "")',
                        "{{result}}",
                    )
                ],
                width=8,
                bars=True,
                decimals=0,
            ),
        ],
    )
    checks = "voicelane_guardian_checks_total"
    admission = Section(
        "Admission and guardian",
        [
            per_second(
                "Admission decisions by reason",
                "New model work allowed or rejected, per reason: ok, rate_limited (429), queue_full (429), "
                "guardian_emergency (503). Cache hits and joins do not pass admission.",
                "reqps",
                "decision, reason",
                "voicelane_admission_decisions_total",
                "{{decision}} {{reason}}",
            ),
            graph(
                "Admission attempts per second",
                "Recent admission attempts per second as each sidecar measures it (the rate limit's view).",
                "reqps",
                [Query(f"sum by (pod) ({sidecar('voicelane_admission_rate_per_second')})", "{{pod}}")],
                width=8,
            ),
            states(
                "Guardian state",
                "Per pod: open, or blocked (new model work refused with 503 after sustained pressure).",
                Query(f"max by (pod) ({sidecar(VARIABLE_SOURCE)})", "{{pod}}"),
                zero=("open", "green"),
                one=("blocked", "red"),
            ),
            graph(
                "Guardian checks failed",
                "Pressure checks that failed per second, per pod; enough in a row block the lane.",
                "ops",
                [
                    Query(
                        summed("rate", "pod", checks, 'result="failed"') + "\nor 0 * " + summed("rate", "pod", checks),
                        "{{pod}}",
                    )
                ],
                width=12,
            ),
            graph(
                "Emergency blocks since start",
                "Times each sidecar's guardian entered the blocked state since it started.",
                "short",
                [Query(f"sum by (pod) ({sidecar('voicelane_guardian_emergency_blocks_total')})", "{{pod}}")],
                width=12,
                decimals=0,
            ),
        ],
    )
    queue = Section(
        "Queue",
        [
            graph(
                "Queue depth by priority",
                "Requests waiting for a model slot: 0 chat and notifications, 1 email TL;DR, 2 email segments.",
                "short",
                [Query(f"sum by (priority) ({sidecar('voicelane_queue_depth')})", "P{{priority}}")],
                width=8,
                decimals=0,
            ),
            graph(
                "Running by priority",
                "Requests holding a model slot.",
                "short",
                [Query(f"sum by (priority) ({sidecar('voicelane_queue_running')})", "P{{priority}}")],
                width=8,
                decimals=0,
            ),
            queue_wait("p50 and p95 time waiting for a model slot."),
        ],
    )
    cache_size = graph(
        "Cache size",
        "Entries and bytes held by each sidecar's result cache.",
        "short",
        [
            Query(f"sum by (pod) ({sidecar('voicelane_cache_entries')})", "{{pod}} entries"),
            Query(f"sum by (pod) ({sidecar('voicelane_cache_bytes')})", "{{pod}} bytes"),
        ],
        width=8,
    ).override_by_regexp(
        ".*bytes",
        [
            model.DynamicConfigValue(id_val="unit", value="bytes"),
            model.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
        ],
    )
    coalescing = Section(
        "Coalescing and cache",
        [
            graph(
                "Single-flight: share joining a running request",
                "Share of model requests that joined an identical one already running instead of starting their own.",
                "percentunit",
                [Query(share("voicelane_singleflight_requests_total", "pod", 'role="joiner"'), "{{pod}}")],
                width=8,
                max_value=1,
            ),
            graph(
                "Cache hit ratio",
                "Share of cache look-ups that hit, for text and for audio.",
                "percentunit",
                [Query(share("voicelane_cache_lookups_total", "kind", 'result="hit"'), "{{kind}}")],
                width=8,
                max_value=1,
            ),
            cache_size,
        ],
    )
    tiers = Section(
        "Upstream model tiers",
        [
            states(
                "Tier health",
                "Per tier: healthy when every sidecar's last health check passed, down when one failed.",
                Query(f"min by (tier) ({sidecar('voicelane_upstream_healthy')})", "{{tier}}"),
                zero=("down", "red"),
                one=("healthy", "green"),
            ),
            states(
                "Circuits",
                "Per tier: open when any sidecar's circuit breaker to it is open (calls skip it).",
                Query(f"max by (tier) ({sidecar('voicelane_upstream_circuit_open')})", "{{tier}}"),
                zero=("closed", "green"),
                one=("open", "red"),
            ),
            per_second(
                "Failovers",
                "Requests moved to the other tier after a failure before the first token. Zero when none.",
                "reqps",
                "from_tier, to_tier",
                "voicelane_failovers_total",
                "{{from_tier}} → {{to_tier}}",
            ),
            graph(
                "Model calls by tier and outcome",
                "Calls to the model tiers per second.",
                "reqps",
                [
                    Query(
                        summed("rate", "tier, outcome", "voicelane_upstream_requests_total"),
                        "{{tier}} {{outcome}}",
                    )
                ],
                width=12,
            ),
            first_token(width=12, description="p50 and p95 from dispatch to the model's first token."),
        ],
    )
    duration = per_cluster("voicelane_operator_reconcile_duration_seconds_bucket")
    operator = Section(
        "Operator",
        [
            graph(
                "Reconciles by result",
                "VoiceLane reconciles per second by result. Operator series are filtered by cluster only, not by "
                "the namespace/lane/pod variables (the operator runs in its own namespace).",
                "ops",
                [
                    Query(
                        f"sum by (result) (rate({per_cluster('voicelane_operator_reconciles_total')}[{RATE_WINDOW}]))",
                        "{{result}}",
                    )
                ],
                width=6,
            ),
            graph(
                "Reconcile errors",
                "Failed reconciles per second; kopf retries them with back-off.",
                "ops",
                [
                    Query(
                        f"sum by (pod) (rate({per_cluster('voicelane_operator_reconcile_errors_total')}[{RATE_WINDOW}]))",
                        "{{pod}}",
                    )
                ],
                width=6,
            ),
            graph(
                "Reconcile duration",
                "p50 and p95 time per reconcile.",
                "s",
                [
                    Query(f"histogram_quantile({q}, sum by (le) (rate({duration}[{RATE_WINDOW}])))", f"p{q[2:4]}")
                    for q in ("0.50", "0.95")
                ],
                width=6,
            ),
            graph(
                "VoiceLanes by condition",
                "Number of VoiceLane resources per status condition.",
                "short",
                [Query(f"sum by (condition) ({per_cluster('voicelane_operator_lanes')})", "{{condition}}")],
                width=6,
                decimals=0,
            ),
        ],
    )
    gate = Section(
        "Model-side gate",
        [
            graph(
                "Gate queue by priority",
                "Model calls waiting for and holding the model server's slots at its gate, from every app pod of "
                "the lane. Gate series are filtered by cluster, namespace and lane (the gate runs in the tier pods).",
                "short",
                [
                    Query(
                        f"sum by (priority) ({per_lane('voicelane_gate_requests_waiting')})", "P{{priority}} waiting"
                    ),
                    Query(
                        f"sum by (priority) ({per_lane('voicelane_gate_requests_running')})", "P{{priority}} running"
                    ),
                ],
                width=8,
                decimals=0,
            ),
            graph(
                "Gate rejects by reason",
                "Model calls the gate refused per second: queue_full (its waiting room), guardian_emergency (the "
                "model server overloaded), deadline_passed (the caller's first-token wait ran out in the queue).",
                "reqps",
                [
                    Query(
                        f"sum by (reason) (rate({per_lane('voicelane_gate_rejects_total')}[{RATE_WINDOW}]))",
                        "{{reason}}",
                    )
                ],
                width=8,
            ),
            graph(
                "Gate calls: own model call or shared",
                "Model calls arriving at the gate per second: leaders make a model call, joiners share an identical "
                "one from any app pod.",
                "reqps",
                [
                    Query(
                        f"sum by (role) (rate({per_lane('voicelane_gate_calls_total')}[{RATE_WINDOW}]))",
                        "{{role}}",
                    )
                ],
                width=8,
            ),
        ],
    )
    return _dashboard(
        "voicelane-lane",
        "VoiceLane / Lane health",
        "Traffic, errors, admission, guardian, queue, coalescing, cache, model tiers, the gate and the operator.",
        ("Time to first audio", "/d/voicelane-ttfa/voicelane-time-to-first-audio"),
        [traffic, admission, queue, coalescing, tiers, gate, operator],
    )


# --- files ----------------------------------------------------------------------------------------


def dashboard_json(board: model.Dashboard) -> str:
    """The dashboard as the chart ships it: keys sorted and indented, so a regeneration changes no byte."""
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated_files() -> dict[Path, str]:
    """Each dashboard file (relative to the repository) with the content it should have."""
    return {TTFA_FILE: dashboard_json(ttfa_dashboard()), LANE_FILE: dashboard_json(lane_dashboard())}


def stale_files(root: Path = REPO_ROOT) -> list[Path]:
    return [
        relative
        for relative, content in generated_files().items()
        if not (root / relative).exists() or (root / relative).read_text(encoding="utf-8") != content
    ]


def write_all(root: Path = REPO_ROOT) -> list[Path]:
    """Write every dashboard file that differs; returns those written."""
    files = generated_files()
    written = stale_files(root)
    for relative in written:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(files[relative], encoding="utf-8")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from voicelane.delivery import generator_main

    return generator_main(
        argv,
        module="voicelane.delivery_dashboards",
        what="dashboard files",
        write_all=write_all,
        stale_files=stale_files,
    )


if __name__ == "__main__":
    sys.exit(main())
