-- Distance per unit and UTC day: tracked from the positions (great-circle legs between consecutive positions of
-- the day, mean Earth radius 6,371.0088 km) beside the figure the unit reported in performance_stats (its current
-- version; NULL until the day is reported).
-- parameters: first_day, last_day, first_day, last_day
WITH legs AS (
  SELECT transport_unit_id, event_date, lat, lon,
         lag(lat) OVER (PARTITION BY transport_unit_id, event_date ORDER BY ts, _source_partition, _source_offset) AS prev_lat,
         lag(lon) OVER (PARTITION BY transport_unit_id, event_date ORDER BY ts, _source_partition, _source_offset) AS prev_lon
  FROM bronze_locations
  WHERE event_date BETWEEN CAST(? AS date) AND CAST(? AS date)
), tracked AS (
  SELECT transport_unit_id, event_date AS day, count(*) AS positions,
         coalesce(sum(2 * 6371.0088 * asin(sqrt(least(1.0,
           power(sin(radians(lat - prev_lat) / 2), 2)
           + cos(radians(prev_lat)) * cos(radians(lat)) * power(sin(radians(lon - prev_lon) / 2), 2))))), 0)
           AS tracked_km
  FROM legs
  GROUP BY transport_unit_id, event_date
)
SELECT t.day, t.transport_unit_id, t.positions, t.tracked_km, s.distance_km AS reported_km,
       t.tracked_km - s.distance_km AS difference_km
FROM tracked AS t
LEFT JOIN (
  SELECT transport_unit_id, stat_date, distance_km
  FROM performance_stats_current
  WHERE stat_date BETWEEN CAST(? AS date) AND CAST(? AS date)
) AS s ON s.transport_unit_id = t.transport_unit_id AND s.stat_date = t.day
ORDER BY t.day, t.transport_unit_id
