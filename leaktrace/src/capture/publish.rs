//! A served capture's figures: onto the exporter's board every interval, and a report to the
//! service at each rolling window's end.

use super::Capture;
use crate::{
    export::{ProcessFigures, SiteFigures},
    kernel::ProbeSet,
};

impl Capture<'_> {
    /// The interval that ends now, onto the board: the target's current image, its first
    /// sites in the live view's order.
    pub(super) fn publish(&mut self, probes: &ProbeSet) {
        let drops = probes.drops().unwrap_or_default();
        let cost = self.cost.sample(probes, &self.pids());
        self.last_cost = Some(cost);
        let (Some(outlet), Some(&index)) = (&self.outlet, self.current.get(&self.target_pid))
        else {
            return;
        };
        let image = &mut self.images[index];
        let view = image.live_view(outlet.sites, self.options.sort, drops.frees_maybe_lost());
        self.memory.record(
            image.pid,
            self.started.elapsed().as_secs_f64(),
            view.live_bytes,
        );
        let top = view
            .rows
            .into_iter()
            .map(|row| SiteFigures {
                id: image.stable_id(row.id),
                scan: image
                    .scan
                    .as_ref()
                    .map(|scan| scan.per_site.get(&row.id).copied().unwrap_or_default()),
                site: row.site,
                live_bytes: row.live_bytes,
                live_blocks: row.live_allocations,
                growth_bytes_per_s: row.growth.bytes_per_s,
                verdict: row.verdict,
            })
            .collect();
        let totals = image.totals();
        outlet.board.publish(ProcessFigures {
            pid: image.pid,
            comm: image.command.clone(),
            live_bytes: view.live_bytes,
            live_blocks: view.live_allocations,
            growth_bytes_per_s: self.memory.heap_growth().bytes_per_s,
            rss_bytes: self.memory.rss().map(|(rss, _)| rss),
            events: totals.allocs + totals.frees,
            drops,
            overhead: cost.share(),
            scan: image.scan.as_ref().map(|scan| scan.totals),
            sites: view.sites,
            top,
        });
    }

    /// A report of the target's current image so far, to the service.
    pub(super) fn hand_over_window(&mut self, probes: &ProbeSet) {
        let drops = probes.drops().unwrap_or_default();
        let (Some(outlet), Some(&index)) = (&mut self.outlet, self.current.get(&self.target_pid))
        else {
            return;
        };
        let mut report = self.images[index].snapshot(drops);
        report.memory = self.memory.samples.clone();
        (outlet.on_window)(report);
    }
}
