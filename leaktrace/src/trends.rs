//! How each site's live bytes moved between live reports.

use crate::ledger::{Ledger, SiteId};

/// Live bytes per site at the previous report, so each report can show the change.
#[derive(Default)]
pub struct IntervalChange {
    previous: Vec<u64>,
}

impl IntervalChange {
    /// Live bytes gained (or lost, if negative) by `site` since the last [`Self::advance`].
    pub fn change(&self, site: SiteId, live_bytes: u64) -> i64 {
        let before = self.previous.get(site.index()).copied().unwrap_or(0);
        live_bytes as i64 - before as i64
    }

    /// Starts a new interval at the ledger's current state.
    pub fn advance(&mut self, ledger: &Ledger) {
        self.previous.clear();
        self.previous
            .extend(ledger.sites().map(|(_, _, stats)| stats.live_bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_is_measured_from_the_last_advance() {
        let mut ledger = Ledger::default();
        let mut change = IntervalChange::default();
        let (site, _) = ledger.record_alloc(0x10, 100, 1, 0);
        assert_eq!(change.change(site, ledger.site(site).live_bytes), 100);
        change.advance(&ledger);
        ledger.record_alloc(0x20, 40, 1, 0);
        ledger.record_free(0x10);
        assert_eq!(change.change(site, ledger.site(site).live_bytes), -60);
    }
}
