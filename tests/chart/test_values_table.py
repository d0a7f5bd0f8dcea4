"""Every value is documented where it is declared, and the chart README's table matches values.yaml."""

from chat_devtools.chart_readme import README, VALUES, rewritten_readme, undocumented


def test_every_value_is_documented():
    assert undocumented(VALUES.read_text()) == []


def test_readme_values_table_is_up_to_date():
    readme = README.read_text()
    assert readme == rewritten_readme(readme, VALUES.read_text()), "run `make chart-readme`"
