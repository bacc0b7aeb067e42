-- performance_stats_history: every version of every unit's daily figures (slowly changing dimension, type 2),
-- keyed by (transport_unit_id, stat_date). A version is valid from its change's ts_ms up to, not including, the
-- next change of the same key; valid_to is NULL and is_current true for the version in force. A delete ends a
-- version and opens none. Ordered as performance_stats_current; a change delivered twice counts once. Filter on
-- stat_date (the partition column).
SELECT transport_unit_id, stat_date, distance_km, fuel_used_l, engine_hours,
       ts_ms AS valid_from, next_ts_ms AS valid_to, next_ts_ms IS NULL AS is_current
FROM (
  SELECT *,
         lead(ts_ms) OVER (
           PARTITION BY transport_unit_id, stat_date
           ORDER BY ts_ms, lsn NULLS FIRST, _source_partition, _source_offset, _file, _line
         ) AS next_ts_ms
  FROM (
    SELECT *,
           row_number() OVER (
             PARTITION BY transport_unit_id, stat_date, ts_ms, lsn
             ORDER BY _source_partition, _source_offset, _file, _line
           ) AS delivery
    FROM bronze_performance_stats
  ) AS delivered
  WHERE delivery = 1
) AS changes
WHERE op <> 'd'
