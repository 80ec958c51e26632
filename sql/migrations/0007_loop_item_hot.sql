-- 0007_loop_item_hot: loop items are issued by index range (iter_index < loop.issued), so
-- nothing looks items up by status any more. Without an index whose predicate names
-- `status`, storing an iteration's status and result is a HOT update (no index writes).
drop index if exists noetl.loop_item_pending_idx;
