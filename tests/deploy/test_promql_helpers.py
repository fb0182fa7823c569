"""The PromQL name extraction that the dashboard and rule lints rely on."""

import pytest

from tests.deploy.promql import grafana_to_promql, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, method) (rate(a_bucket{code="OK", x=~"b|c"}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.99, rec:metric:p99_5m) > 1e3", {"rec:metric:p99_5m"}),
        ('sum by (code) (rate(x_total{code!="OK"}[1m])) / ignoring (code) group_left sum(rate(x_total[1m]))', {"x_total"}),
        ('up{job="s"} == 1 unless on (instance) info_metric', {"up", "info_metric"}),
        ("process_resident_memory_bytes / 2^30", {"process_resident_memory_bytes"}),
        ('count by (instance) (rate(y[1m] offset 5m)) and bool z', {"y", "z"}),
    ],
)
def test_metric_names(expr, names):
    assert metric_names(expr) == names


def test_grafana_variables_are_substituted_or_refused():
    assert grafana_to_promql('rate(x{model=~"$model"}[$__rate_interval])') == 'rate(x{model=~".*"}[1m])'
    with pytest.raises(ValueError, match=r"\$nope"):
        grafana_to_promql("rate(x[$nope])")
