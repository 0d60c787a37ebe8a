//! When to renew a certificate: a random point between 50 % and 80 % of its lifetime, so a
//! fleet whose certificates were issued together does not renew all at once, and a failed
//! renewal has a fifth of the lifetime left for retries. Pure: the randomness is an input.

use std::time::{Duration, SystemTime};

/// The earliest fraction of the lifetime at which a certificate is renewed.
pub const EARLIEST: f64 = 0.5;
/// The latest fraction of the lifetime at which a certificate is renewed.
pub const LATEST: f64 = 0.8;

/// The point in time to renew a certificate valid from `not_before` to `not_after`:
/// `not_before + lifetime × (EARLIEST + (LATEST − EARLIEST) × unit)`, where `unit` (clamped
/// to [0, 1]) picks the point. A certificate without a positive lifetime is renewed at
/// `not_before`, i.e. at once.
pub fn renewal_point(not_before: SystemTime, not_after: SystemTime, unit: f64) -> SystemTime {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return not_before;
    };
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    let fraction = EARLIEST + (LATEST - EARLIEST) * unit;
    not_before + lifetime.mul_f64(fraction)
}

/// [`renewal_point`] at a uniformly random point of the window.
pub fn random_renewal_point(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    renewal_point(not_before, not_after, rand::random::<f64>())
}

/// How long to wait from `now` until `point` (zero when it has passed).
pub fn delay_until(point: SystemTime, now: SystemTime) -> Duration {
    point.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * days + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn renewal_should_fall_between_half_and_four_fifths_of_the_lifetime() {
        let (nb, na) = (at(0), at(90));
        assert_eq!(renewal_point(nb, na, 0.0), at(45));
        assert_eq!(renewal_point(nb, na, 1.0), at(72));
        assert_eq!(renewal_point(nb, na, 0.5), nb + DAY.mul_f64(58.5));
        // Out-of-range inputs stay in the window.
        assert_eq!(renewal_point(nb, na, -3.0), at(45));
        assert_eq!(renewal_point(nb, na, 7.0), at(72));
        assert_eq!(renewal_point(nb, na, f64::NAN), at(45));
    }

    #[test]
    fn random_renewal_points_should_stay_in_the_window_and_spread() {
        let (nb, na) = (at(0), at(90));
        let points: Vec<SystemTime> = (0..2_000).map(|_| random_renewal_point(nb, na)).collect();
        assert!(points.iter().all(|p| (at(45)..=at(72)).contains(p)));
        // Spread over the window, not bunched at one end.
        assert!(points.iter().any(|p| *p < at(50)));
        assert!(points.iter().any(|p| *p > at(67)));
    }

    #[test]
    fn a_certificate_without_lifetime_should_be_renewed_at_once() {
        assert_eq!(renewal_point(at(5), at(5), 0.7), at(5));
        assert_eq!(renewal_point(at(5), at(1), 0.7), at(5));
        assert_eq!(delay_until(at(5), at(6)), Duration::ZERO);
        assert_eq!(delay_until(at(6), at(5)), DAY);
    }
}
