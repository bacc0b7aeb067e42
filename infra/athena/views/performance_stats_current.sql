-- performance_stats_current: each unit's daily figures as the source database holds them now, one row per
-- (transport_unit_id, stat_date). The latest change of each key in source order wins: (ts_ms, lsn). Equal
-- (ts_ms, lsn) is one change delivered again (Debezium is at-least-once): the first delivery counts. A key whose
-- latest change is a delete is absent. Filter on stat_date: it is the partition column, and the filter reaches
-- the scan through the window.
SELECT transport_unit_id, stat_date, distance_km, fuel_used_l, engine_hours, ts_ms AS updated_at, lsn
FROM (
  SELECT *,
         row_number() OVER (
           PARTITION BY transport_unit_id, stat_date
           ORDER BY ts_ms DESC, lsn DESC NULLS LAST, _source_partition, _source_offset, _file, _line
         ) AS change_rank
  FROM bronze_performance_stats
) AS changes
WHERE change_rank = 1 AND op <> 'd'
