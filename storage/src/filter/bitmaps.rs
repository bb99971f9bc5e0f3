//! Filters evaluated over a segment's rows as bitmaps: the tree is combined with set
//! operations, and each leaf is answered by the caller (from a field index, located ids or
//! payloads; see [`super::allowed`]).
use roaring::RoaringBitmap;

use super::ast::{Condition, Filter};
use crate::error::Result;

/// Every row of a segment of `n` rows.
pub(crate) fn all_rows(n: u32) -> RoaringBitmap {
    let mut b = RoaringBitmap::new();
    b.insert_range(0..n);
    b
}

/// Evaluates a filter tree to a bitmap of rows; `leaf` answers conditions and `all` gives
/// every row of the segment (built only for `must_not` and empty groups, which need it).
/// Dead rows are the caller's to remove.
pub(crate) fn eval_tree(
    f: &Filter,
    all: &dyn Fn() -> RoaringBitmap,
    leaf: &mut impl FnMut(&Condition) -> Result<RoaringBitmap>,
) -> Result<RoaringBitmap> {
    Ok(match f {
        Filter::Cond(c) => leaf(c)?,
        Filter::Must(fs) | Filter::Should(fs) if fs.is_empty() => all(),
        Filter::Must(fs) => {
            let mut acc = eval_tree(&fs[0], all, leaf)?;
            for x in &fs[1..] {
                if acc.is_empty() {
                    break;
                }
                acc &= eval_tree(x, all, leaf)?;
            }
            acc
        }
        Filter::Should(fs) => {
            let mut acc = RoaringBitmap::new();
            for x in fs {
                acc |= eval_tree(x, all, leaf)?;
            }
            acc
        }
        Filter::MustNot(fs) => {
            let mut acc = all();
            for x in fs {
                if acc.is_empty() {
                    break;
                }
                acc -= eval_tree(x, all, leaf)?;
            }
            acc
        }
    })
}

/// Every `has_id` condition of `f`, into `out`.
pub(crate) fn has_id_conditions<'a>(f: &'a Filter, out: &mut Vec<&'a Condition>) {
    match f {
        Filter::Cond(c @ Condition::HasId(_)) => out.push(c),
        Filter::Cond(_) => {}
        Filter::Must(fs) | Filter::Should(fs) | Filter::MustNot(fs) => {
            fs.iter().for_each(|x| has_id_conditions(x, out));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::parse;

    #[test]
    fn the_tree_combines_leaf_bitmaps() {
        // Leaf `a = k` holds on rows that are multiples of k, of 0..10.
        let mut leaf = |c: &Condition| -> Result<RoaringBitmap> {
            let Condition::Match {
                value: crate::filter::Literal::Int(k),
                ..
            } = c
            else {
                return Ok(RoaringBitmap::new());
            };
            Ok((0..10u32).filter(|r| r % *k as u32 == 0).collect())
        };
        let all = || all_rows(10);
        let f = parse("(a = 2 or a = 3) and not a = 6").unwrap();
        let got: Vec<u32> = eval_tree(&f, &all, &mut leaf).unwrap().iter().collect();
        assert_eq!(got, vec![2, 3, 4, 8, 9]);
        let mut conds = Vec::new();
        let with_ids = parse("id in [1] or (a = 1 and id in [2])").unwrap();
        has_id_conditions(&with_ids, &mut conds);
        assert_eq!(conds.len(), 2);
    }
}
