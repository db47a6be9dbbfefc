"""Partitions: tenant x upload month.

A tenant is a dynamic partition, added on its first upload; the month is the calendar month of the
upload. For 1,000 tenants over 3 years that is 1,000 x 36 = 36,000 partitions per asset, within
Dagster's guidance of at most 100,000 (a daily grain would be 1,095,000; weekly, 157,000).
"""

from dagster import DynamicPartitionsDefinition, MonthlyPartitionsDefinition, MultiPartitionsDefinition

TENANT_DIMENSION = "tenant"
MONTH_DIMENSION = "month"
PARTITIONS_START = "2026-01-01"

tenant_partitions = DynamicPartitionsDefinition(name="tenants")
# end_offset=1 includes the current, still open month: uploads are ingested the day they land.
month_partitions = MonthlyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)
tenant_month_partitions = MultiPartitionsDefinition(
    {TENANT_DIMENSION: tenant_partitions, MONTH_DIMENSION: month_partitions}
)

