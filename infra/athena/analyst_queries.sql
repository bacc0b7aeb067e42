-- Example analyst queries over the bronze tables (Athena engine v3). Partition filters (event_date, stat_date)
-- keep the scan to the days asked for.

-- Positions per unit and day.
SELECT transport_unit_id, event_date, count(*) AS positions
FROM fleetlake.bronze_locations
WHERE event_date BETWEEN DATE '2026-11-01' AND DATE '2026-11-30'
GROUP BY transport_unit_id, event_date
ORDER BY event_date, transport_unit_id;

-- Mean and p90 speed and wind per unit and day (approx_percentile: Athena's t-digest percentile).
SELECT transport_unit_id, event_date,
       avg(speed_kmh) AS mean_speed_kmh,
       approx_percentile(speed_kmh, 0.9) AS p90_speed_kmh,
       avg(wind_speed_kmh) AS mean_wind_kmh,
       approx_percentile(wind_speed_kmh, 0.9) AS p90_wind_kmh
FROM fleetlake.bronze_locations
WHERE event_date = DATE '2026-11-24'
GROUP BY transport_unit_id, event_date;

-- Share of positions whose weather could not be had, per day.
SELECT event_date,
       count_if(weather_status <> 'ok') * 1.0 / count(*) AS degraded_share
FROM fleetlake.bronze_locations
GROUP BY event_date
ORDER BY event_date;

-- The current performance figures per unit and day: the latest change per key (the table is a change log).
SELECT transport_unit_id, stat_date, distance_km, fuel_used_l, engine_hours
FROM (
  SELECT *, row_number() OVER (PARTITION BY transport_unit_id, stat_date ORDER BY lsn DESC) AS rn
  FROM fleetlake.bronze_performance_stats
)
WHERE rn = 1 AND op <> 'd';

-- Fuel per 100 km, mean and p90 per transport type and day, joining the current unit descriptions.
WITH units AS (
  SELECT transport_unit_id, transport_type
  FROM (
    SELECT *, row_number() OVER (PARTITION BY transport_unit_id ORDER BY lsn DESC) AS rn
    FROM fleetlake.bronze_transport_units
  )
  WHERE rn = 1 AND op <> 'd'
), stats AS (
  SELECT transport_unit_id, stat_date, distance_km, fuel_used_l
  FROM (
    SELECT *, row_number() OVER (PARTITION BY transport_unit_id, stat_date ORDER BY lsn DESC) AS rn
    FROM fleetlake.bronze_performance_stats
  )
  WHERE rn = 1 AND op <> 'd' AND distance_km > 0
)
SELECT u.transport_type, s.stat_date,
       avg(100 * s.fuel_used_l / s.distance_km) AS mean_l_per_100km,
       approx_percentile(100 * s.fuel_used_l / s.distance_km, 0.9) AS p90_l_per_100km,
       count(*) AS units
FROM stats s JOIN units u USING (transport_unit_id)
GROUP BY u.transport_type, s.stat_date
ORDER BY s.stat_date, u.transport_type;
