-- The latest position of every unit seen since a day, with its current name and type (NULL for a unit the
-- source database does not hold, or holds no more). Ties on ts go to the later Kafka position.
-- parameters: since_day (the days before it are not read)
SELECT p.transport_unit_id, u.name, coalesce(u.transport_type, p.transport_type) AS transport_type,
       p.ts, p.lat, p.lon, p.speed_kmh, p.weather_status
FROM (
  SELECT *,
         row_number() OVER (
           PARTITION BY transport_unit_id
           ORDER BY ts DESC, _source_partition DESC, _source_offset DESC
         ) AS position_rank
  FROM bronze_locations
  WHERE event_date >= CAST(? AS date)
) AS p
LEFT JOIN transport_units_current AS u ON u.transport_unit_id = p.transport_unit_id
WHERE p.position_rank = 1
ORDER BY p.transport_unit_id
