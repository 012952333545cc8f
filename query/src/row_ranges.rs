//! A tantivy query matching given ranges of doc ids. A split's index has
//! one segment whose doc ids are its Parquet rows, so the blocks the
//! number index names become this query and combine with the others
//! (stream, time, words) in tantivy's own intersections.

use std::sync::Arc;

use tantivy::query::{EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::{DocId, DocSet, Score, SegmentReader, TantivyError, TERMINATED};

/// Rows `[start, end)`, sorted and disjoint.
#[derive(Clone, Debug)]
pub struct RowRangesQuery {
    ranges: Arc<Vec<(u32, u32)>>,
}

impl RowRangesQuery {
    /// `ranges` must be sorted and disjoint (as the number index gives them).
    pub fn new(ranges: Vec<(u32, u32)>) -> Self {
        debug_assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0) && ranges.iter().all(|r| r.0 < r.1));
        Self { ranges: Arc::new(ranges) }
    }
}

impl Query for RowRangesQuery {
    fn weight(&self, _: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(RowRangesWeight(self.ranges.clone())))
    }
}

struct RowRangesWeight(Arc<Vec<(u32, u32)>>);

impl Weight for RowRangesWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(RowRangesScorer::new(self.0.clone(), reader.max_doc(), boost)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = RowRangesScorer::new(self.0.clone(), reader.max_doc(), 1.0);
        if scorer.seek(doc) != doc {
            return Err(TantivyError::InvalidArgument(format!(
                "document {doc} is in none of the row ranges"
            )));
        }
        Ok(Explanation::new("RowRangesQuery", 1.0))
    }
}

struct RowRangesScorer {
    ranges: Arc<Vec<(u32, u32)>>,
    /// Index of the range holding `doc`.
    at: usize,
    doc: DocId,
    max_doc: DocId,
    score: Score,
    /// Rows in all ranges.
    size: u32,
}

impl RowRangesScorer {
    fn new(ranges: Arc<Vec<(u32, u32)>>, max_doc: DocId, score: Score) -> Self {
        let doc = match ranges.first() {
            Some((start, _)) if *start < max_doc => *start,
            _ => TERMINATED,
        };
        let size = ranges
            .iter()
            .fold(0u32, |n, (start, end)| n.saturating_add(end.saturating_sub(*start)));
        Self {
            ranges,
            at: 0,
            doc,
            max_doc,
            score,
            size,
        }
    }

    /// Positions on the first row at or after `target` from range `from` on.
    fn land(&mut self, from: usize, target: DocId) -> DocId {
        let rest = &self.ranges[from..];
        let skip = rest.partition_point(|(_, end)| *end <= target);
        self.at = from + skip;
        self.doc = match self.ranges.get(self.at) {
            Some((start, _)) => (*start).max(target),
            None => TERMINATED,
        };
        if self.doc >= self.max_doc {
            self.doc = TERMINATED;
        }
        self.doc
    }
}

impl DocSet for RowRangesScorer {
    fn advance(&mut self) -> DocId {
        if self.doc == TERMINATED {
            return TERMINATED;
        }
        let next = self.doc + 1;
        if next < self.ranges[self.at].1 && next < self.max_doc {
            self.doc = next;
            return next;
        }
        self.land(self.at + 1, next)
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.doc == TERMINATED || target <= self.doc {
            return self.doc;
        }
        // Inside the current range (an intersection seeks row by row).
        if target < self.ranges[self.at].1 && target < self.max_doc {
            self.doc = target;
            return target;
        }
        self.land(self.at + 1, target)
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        self.size
    }
}

impl Scorer for RowRangesScorer {
    fn score(&mut self) -> Score {
        self.score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut scorer: RowRangesScorer) -> Vec<DocId> {
        let mut out = Vec::new();
        while scorer.doc() != TERMINATED {
            out.push(scorer.doc());
            scorer.advance();
        }
        out
    }

    #[test]
    fn walks_and_seeks_the_ranges() {
        let ranges = Arc::new(vec![(2, 4), (7, 8), (10, 20)]);
        assert_eq!(
            all(RowRangesScorer::new(ranges.clone(), 100, 1.0)),
            [2, 3, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
        );
        // Rows past the segment's end are not matched.
        assert_eq!(all(RowRangesScorer::new(ranges.clone(), 12, 1.0)), [2, 3, 7, 10, 11]);
        let mut scorer = RowRangesScorer::new(ranges.clone(), 100, 1.0);
        assert_eq!(scorer.seek(5), 7);
        assert_eq!(scorer.seek(7), 7);
        assert_eq!(scorer.seek(9), 10);
        assert_eq!(scorer.seek(15), 15);
        assert_eq!(scorer.advance(), 16);
        assert_eq!(scorer.seek(20), TERMINATED);
        assert_eq!(scorer.advance(), TERMINATED);
        assert_eq!(RowRangesScorer::new(Arc::new(Vec::new()), 10, 1.0).doc(), TERMINATED);
        assert_eq!(RowRangesScorer::new(Arc::new(vec![(10, 12)]), 10, 1.0).doc(), TERMINATED);
    }
}
