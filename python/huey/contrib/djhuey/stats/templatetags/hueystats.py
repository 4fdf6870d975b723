"""Template helpers of the Huey dashboard: ``{% load hueystats %}``.

{{ seconds|dur }}        a run time: "850 ms", "2.40 s" (a dash when unknown)
{{ seconds|elapsed }}    time since a task started: "12.5s", "3m 20s", "2h 5m"
{% sigbadge signal %}    the signal name as a coloured badge
{% barchart complete error %}   an SVG bar per minute, errors stacked on completions
"""

from django import template
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from huey.contrib.stats_dashboard import (
    bar_chart_svg,
    dashboard_css,
    format_duration,
    format_elapsed,
    signal_colour,
)

register = template.Library()


@register.filter
def dur(seconds):
    return format_duration(seconds) or mark_safe('&mdash;')


@register.filter
def elapsed(seconds):
    return format_elapsed(seconds)


@register.simple_tag
def sigbadge(signal):
    return format_html('<span class="hs-badge hs-sig-{}">{}</span>', signal_colour(signal), signal)


@register.simple_tag
def barchart(complete, error, width=600, height=56):
    return mark_safe(bar_chart_svg(complete, error, int(width), int(height)))


@register.simple_tag
def hueystats_css():
    return format_html('<style>{}</style>', mark_safe(dashboard_css()))
