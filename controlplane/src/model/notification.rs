//! Notification events: what a notifier is told about a change of an alert, and when.

use super::{Alert, Severity};

/// Why a message is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The notifier hears of the alert for the first time (new, or newly above its minimum).
    New,
    /// Its severity rose.
    Escalated,
    /// Its targets reached the next power of ten (100, 1,000, ...).
    Grew,
    /// `notifiers test`: a sample alert.
    Test,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::New => "alert.new",
            Event::Escalated => "alert.escalated",
            Event::Grew => "alert.grew",
            Event::Test => "alert.test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "alert.new" => Event::New,
            "alert.escalated" => Event::Escalated,
            "alert.grew" => Event::Grew,
            "alert.test" => Event::Test,
            _ => return None,
        })
    }

    /// The word messages use: `new`, `escalated`, `growing`.
    pub fn verb(self) -> &'static str {
        match self {
            Event::New => "new",
            Event::Escalated => "escalated",
            Event::Grew => "growing",
            Event::Test => "test",
        }
    }
}

/// What a notifier is told about a change of an alert from `before` (None: new) to `after`.
pub fn event_for(min: Severity, before: Option<&Alert>, after: &Alert) -> Option<Event> {
    let sev = |a: &Alert| Severity::parse(&a.severity).unwrap_or(Severity::Low);
    if sev(after) < min {
        return None;
    }
    let Some(b) = before else {
        return Some(Event::New);
    };
    if sev(b) < min {
        return Some(Event::New);
    }
    if sev(after) > sev(b) {
        return Some(Event::Escalated);
    }
    let decade = |n: u64| if n < 100 { 0 } else { n.ilog10() };
    (decade(after.targets_total) > decade(b.targets_total)).then_some(Event::Grew)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::alert::testing::alert;

    #[test]
    fn events_are_new_escalated_or_grown_and_respect_the_minimum() {
        let low = alert("low", 16);
        let high = alert("high", 16);
        assert_eq!(event_for(Severity::Low, None, &low), Some(Event::New));
        assert_eq!(event_for(Severity::High, None, &low), None);
        assert_eq!(
            event_for(Severity::High, Some(&low), &high),
            Some(Event::New),
            "first heard of"
        );
        assert_eq!(
            event_for(Severity::Low, Some(&low), &high),
            Some(Event::Escalated)
        );
        assert_eq!(
            event_for(Severity::Low, Some(&low), &alert("low", 17)),
            None
        );
        assert_eq!(
            event_for(Severity::Low, Some(&low), &alert("low", 99)),
            None
        );
        assert_eq!(
            event_for(Severity::Low, Some(&alert("low", 99)), &alert("low", 100)),
            Some(Event::Grew)
        );
        assert_eq!(
            event_for(Severity::Low, Some(&alert("low", 100)), &alert("low", 999)),
            None
        );
        assert_eq!(
            event_for(Severity::Low, Some(&alert("low", 999)), &alert("low", 1000)),
            Some(Event::Grew)
        );
    }
}
