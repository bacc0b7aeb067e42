-- Fuel per 100 km per transport type and UTC day, mean and 90th percentile, from the current daily figures and
-- each unit's current type (units deleted since are left out; days without distance or fuel too).
-- parameters: first_day, last_day
SELECT u.transport_type, s.stat_date AS day,
       count(*) AS units,
       avg(100 * s.fuel_used_l / s.distance_km) AS mean_l_per_100km,
       approx_percentile(100 * s.fuel_used_l / s.distance_km, 0.9) AS p90_l_per_100km
FROM performance_stats_current AS s
JOIN transport_units_current AS u ON u.transport_unit_id = s.transport_unit_id
WHERE s.stat_date BETWEEN CAST(? AS date) AND CAST(? AS date) AND s.distance_km > 0 AND s.fuel_used_l IS NOT NULL
GROUP BY u.transport_type, s.stat_date
ORDER BY day, u.transport_type
