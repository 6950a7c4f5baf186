//! What a deploy shows while it runs. On a terminal: a bar for the first pass and one per
//! device, or, once more than [`AGGREGATE_ABOVE`] devices have joined, one line of counts
//! per stage with each failure printed above it as it happens. Not on a terminal (logs,
//! CI): one line per device state change, or, above the handful, the failures as they
//! happen and the counts every few seconds. Never on stdout with `--json`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use edge_proto::command::{hex, AckState, Target};
use edgectl::tally::{Tally, AGGREGATE_ABOVE};
use edgectl::track::state_text;
use edgectl::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the counts line is printed when not on a terminal.
const COUNTS_EVERY: Duration = Duration::from_secs(5);

/// Where progress goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Bars on the terminal.
    Bars,
    /// Plain lines on stdout.
    Lines,
    /// Plain lines on stderr (stdout carries JSON).
    Stderr,
}

/// A deploy's progress display; fed with the library's [`Event`]s.
pub struct DeployUi {
    multi: MultiProgress,
    sink: Sink,
    target: String,
    tally: Tally,
    bars: HashMap<String, ProgressBar>,
    chunks: Option<ProgressBar>,
    counts: Option<ProgressBar>,
    counts_printed: Option<Instant>,
}

impl DeployUi {
    /// `json`: stdout is for the final document, so progress goes to stderr as lines.
    pub fn new(target: &Target, json: bool) -> DeployUi {
        let sink = match (json, std::io::stdout().is_terminal()) {
            (true, _) => Sink::Stderr,
            (false, true) => Sink::Bars,
            (false, false) => Sink::Lines,
        };
        let draw = if sink == Sink::Bars { ProgressDrawTarget::stdout() } else { ProgressDrawTarget::hidden() };
        let target = match target {
            Target::Device(d) => format!("device {d}"),
            Target::Group(g) => format!("group {g}"),
        };
        DeployUi {
            multi: MultiProgress::with_draw_target(draw),
            sink,
            target,
            tally: Tally::default(),
            bars: Default::default(),
            chunks: None,
            counts: None,
            counts_printed: None,
        }
    }

    /// A line above the bars (or plainly, without bars).
    fn say(&self, line: &str) {
        match self.sink {
            Sink::Bars => {
                let _ = self.multi.println(line);
            }
            Sink::Lines => println!("{line}"),
            Sink::Stderr => eprintln!("{line}"),
        }
    }

    fn aggregated(&self) -> bool {
        self.tally.devices() > AGGREGATE_ABOVE
    }

    /// Handles one event of the deploy.
    pub fn on_event(&mut self, event: &Event) {
        let style = |t: &str| ProgressStyle::with_template(t).expect("static template").progress_chars("=> ");
        match event {
            Event::Published { command_id, chunks, bytes, .. } => {
                let plural = if *chunks == 1 { "" } else { "s" };
                self.say(&format!(
                    "deploy command {} to {} ({bytes} bytes in {chunks} chunk{plural})",
                    hex(command_id),
                    self.target
                ));
            }
            Event::TransferStarted { .. } => {
                // Above the devices' bars, which appear as they accept.
                let bar = self.multi.insert(0, ProgressBar::new(0));
                bar.set_style(style("{prefix:<16} [{bar:30}] {pos}/{len} chunks"));
                bar.set_prefix("published");
                self.chunks = Some(bar);
            }
            Event::Sent { sent, total } => {
                if let Some(bar) = &self.chunks {
                    bar.set_length(u64::from(*total));
                    bar.set_position(u64::from(*sent));
                }
            }
            Event::Ack(change) => {
                let failure = self.tally.record(change);
                if self.aggregated() {
                    self.show_counts(failure);
                } else if self.sink == Sink::Bars {
                    self.show_bar(&change.device, &change.state, &style("{prefix:<16} [{bar:30}] {pos:>3} % {msg}"));
                } else {
                    let what = match &change.state {
                        AckState::Progress(p) if *p >= 100 => "progress 100 % (verified, installing)".to_string(),
                        AckState::Progress(p) => format!("progress {p} %"),
                        state => state_text(state),
                    };
                    self.say(&format!("{:<16} {what}", change.device));
                }
            }
            Event::Repair { device, queued } if *queued > 0 && !self.aggregated() => {
                self.say(&format!("{device}: resending {queued} missing chunks"));
            }
            Event::Repair { .. } => {}
            Event::Disconnected(why) => self.say(&format!("broker connection lost ({why}); reconnecting")),
            Event::Reconnected => self.say("reconnected to the broker"),
        }
    }

    fn show_bar(&mut self, device: &str, state: &AckState, style: &ProgressStyle) {
        let bar = self.bars.entry(device.to_string()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(100));
            bar.set_style(style.clone());
            bar.set_prefix(device.to_string());
            bar
        });
        match state {
            AckState::Accepted => bar.set_message("accepted"),
            AckState::Progress(p) => {
                bar.set_position(u64::from(*p));
                bar.set_message(if *p >= 100 { "verified, installing" } else { "receiving" });
            }
            AckState::Succeeded => bar.finish_with_message("succeeded"),
            state => bar.abandon_with_message(state_text(state)),
        }
    }

    /// Above the handful: the per-device bars give way to one line of counts; failures are
    /// printed as they happen.
    fn show_counts(&mut self, failure: Option<String>) {
        if let Some(line) = failure {
            self.say(&line);
        }
        if self.sink == Sink::Bars {
            for (_, bar) in self.bars.drain() {
                self.multi.remove(&bar);
            }
            let counts = self.counts.get_or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            });
            counts.set_message(self.tally.line());
        } else if self.counts_printed.is_none_or(|t| t.elapsed() >= COUNTS_EVERY) {
            self.counts_printed = Some(Instant::now());
            self.say(&self.tally.line());
        }
    }

    /// Clears the bars; above the handful, prints the final counts and the failures again
    /// (the per-device table follows).
    pub fn finish(&mut self) {
        if let Some(bar) = self.chunks.take() {
            bar.finish();
        }
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        if let Some(bar) = self.counts.take() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
        if self.aggregated() {
            self.say(&self.tally.line());
        }
    }
}
